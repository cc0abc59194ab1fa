"""GRPO, R1-Zero style: sample a group of answers per prompt, grade them by rule, push up the good ones.

Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath §4.1) is PPO without a value
network. For each prompt q the sampling policy pi_old writes G completions o_1..o_G; a rule-based
reward (`minids.rewards`) scores each one, r_i; and each completion's advantage is how much better
it did than its own group, the same number for every one of its tokens (§4.1.2, outcome supervision):

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

The policy pi_theta then maximises (DeepSeekMath eq. 3)

    J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)
                                  - beta KL_it ]
    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)
    KL_it  = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1     (eq. 4, Schulman's "k3" estimator, >= 0)

The clip stops one batch of samples from moving the policy far (it matters only when the same
samples are reused for mu > 1 updates: with mu = 1 the ratio is exactly 1). The KL term keeps
pi_theta near a frozen reference pi_ref (usually the starting model); beta = 0 drops it, and then no
reference model is needed. The group mean is the baseline that the critic gives PPO, so a group whose
completions all score the same has zero advantage and teaches nothing.

DeepSeek-R1-Zero (R1 §2.2) ran exactly this on a base model with two rewards, accuracy and format,
and AIME pass@1 went from 15.6% to 71.0%. Later work changed the details; `GRPOConfig` selects them:

- `loss_type` (how the per-token terms l_it, masked by the completion mask, are averaged):
    grpo      1/G sum_i (1/|o_i| sum_t l_it)            DeepSeekMath eq. 3
    bnpo      sum_{i,t} l_it / sum_i |o_i|   over the whole batch   (token mean, "batch-normalised")
    dapo      per group: sum_{i,t} l_it / sum_i |o_i|, then the mean over groups  (Yu et al., 2025,
              DAPO §3.3, token-level loss: long answers count per token, not diluted by 1/|o_i|)
    dr_grpo   sum_{i,t} l_it / (number of completions * max_new_tokens)   (Liu et al., 2025,
              "Understanding R1-Zero-Like Training": a constant, so no bias by length)
- `scale_rewards`: "group" divides by the group's std (§4.1.2); "batch" by the std of every reward in
  the batch; "none" not at all (Dr. GRPO: A_i = r_i - mean(r), no bias by question difficulty).
- `epsilon_low`, `epsilon_high`: DAPO's clip-higher (§3.1; 0.2, 0.28) lets unlikely tokens grow faster.
- `ratio_level`: "token" as above, or "sequence": one ratio per completion,
  (pi_theta(o_i) / pi_old(o_i)) ** (1/|o_i|) (Zheng et al., 2025, "Group Sequence Policy Optimization").
- `drop_equal_groups`: leave out groups whose rewards are all equal (DAPO §3.2, dynamic sampling, which
  then samples more prompts; here they are only dropped).
- `mu`: updates per batch of rollouts (DeepSeekMath's "iterations"; mu > 1 makes the ratio matter).

The trainer (`train_grpo`) samples the G completions of each prompt with the jitted KV-cache
generator (`minids.generate`), scores them, and then runs `grpo_step`, one compiled update, mu times.
It logs mean reward, accuracy, format rate, KL, clip fraction, completion length and the fraction of
groups with zero advantage, and evaluates on held-out prompts (greedy accuracy and pass@k).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.data import CharTokenizer
from minids.generate import generate, left_pad
from minids.model import Transformer
from minids.rewards import REWARDS, TEMPLATES, RewardFn, format_reward

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
RATIO_LEVELS = ("token", "sequence")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_number(name: str, value: Any, low: float, high: float = math.inf, *, open_low=True) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value < high
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bound}" + (f" and < {high}" if high < math.inf
                         else "") + f", got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class GRPOConfig:
    """Everything a GRPO run needs besides the model and the prompts; validated when made."""

    steps: int = 100  # rounds of (sample, grade, update mu times)
    prompts_per_step: int = 16
    group_size: int = 8  # G, completions per prompt
    mu: int = 1  # updates per batch of rollouts
    lr: float = 3e-4
    beta: float = 0.0  # weight of the KL to the reference; 0 = no reference model
    ref_refresh_every: int = 0  # copy the policy into the reference every N steps (0 = never)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    ratio_level: str = "token"
    drop_equal_groups: bool = False
    adv_eps: float = 1e-4  # the eps in (r - mean) / (std + eps)
    temperature: float = 1.0
    max_new_tokens: int = 32
    template: str = "r1"  # "r1": answer inside <answer> tags; "plain": the completion is the answer
    rewards: tuple[str, ...] = ("accuracy", "format")  # names in minids.rewards.REWARDS
    reward_weights: tuple[float, ...] = (1.0, 0.5)
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    eval_every: int = 0  # evaluate on held-out prompts every N steps (0 = before and after only)
    eval_k: int = 8  # pass@k samples per held-out prompt (0 = greedy only)
    ckpt_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("prompts_per_step", self.prompts_per_step, 1)
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"group_size must be an integer >= 2 (advantages compare the completions of "
                             f"a group with each other), got {self.group_size!r}")
        for name in ("mu", "max_new_tokens"):
            _check_int(name, getattr(self, name), 1)
        for name in ("ref_refresh_every", "eval_every", "eval_k", "ckpt_every", "seed"):
            _check_int(name, getattr(self, name), 0)
        _check_number("lr", self.lr, 0.0, 1.0)
        _check_number("beta", self.beta, 0.0, open_low=False)
        _check_number("epsilon_low", self.epsilon_low, 0.0, 1.0)
        _check_number("epsilon_high", self.epsilon_high, 0.0)
        _check_number("adv_eps", self.adv_eps, 0.0, open_low=False)
        _check_number("temperature", self.temperature, 0.0)
        _check_number("grad_clip", self.grad_clip, 0.0)
        _check_number("weight_decay", self.weight_decay, 0.0, 1.0, open_low=False)
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _check_choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        _check_choice("template", self.template, TEMPLATES)
        if not isinstance(self.drop_equal_groups, bool):
            raise ValueError(f"drop_equal_groups must be a bool, got {self.drop_equal_groups!r}")
        if not isinstance(self.rewards, tuple) or not self.rewards:
            raise ValueError(f"rewards must be a non-empty tuple of names, got {self.rewards!r}")
        for name in self.rewards:
            _check_choice("rewards", name, tuple(REWARDS))
        if not isinstance(self.reward_weights, tuple) or len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights must be a tuple with one weight per reward "
                             f"({len(self.rewards)}), got {self.reward_weights!r}")
        for w in self.reward_weights:
            _check_number("reward_weights", w, -math.inf)


# ---------------------------------------------------------------------------- the objective


def group_advantages(
    rewards: Float[Array, "B G"], scale: str = "group", eps: float = 1e-4
) -> Float[Array, "B G"]:
    """A_i = (r_i - mean of its group) / (std + eps) (DeepSeekMath §4.1.2), one row per prompt.

    scale "group": the std of the row (population std, ddof 0); "batch": the std of all rewards;
    "none": no division (Dr. GRPO). A row of equal rewards gives zeros in every case.
    """
    _check_choice("scale", scale, SCALE_REWARDS)
    # A group of equal rewards is exactly zero, not mean-rounding noise divided by a tiny std.
    equal = jnp.max(rewards, axis=1, keepdims=True) == jnp.min(rewards, axis=1, keepdims=True)
    centred = jnp.where(equal, 0.0, rewards - jnp.mean(rewards, axis=1, keepdims=True))
    if scale == "none":
        return centred
    std = jnp.std(rewards, axis=1, keepdims=True) if scale == "group" else jnp.std(rewards)
    return jnp.where(equal, 0.0, centred / jnp.where(equal, 1.0, std + eps))


def k3_kl(
    logp: Float[Array, "B T"], ref_logp: Float[Array, "B T"], mask: Bool[Array, "B T"]
) -> Float[Array, "B T"]:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token (DeepSeekMath eq. 4): e^d - d - 1
    with d = log pi_ref - log pi_theta. Non-negative, zero where the two agree and at masked
    (padding) tokens."""
    d = jnp.where(mask, ref_logp - logp, 0.0)  # before exp: padding must not overflow into a NaN
    return jnp.where(mask, jnp.exp(d) - d - 1.0, 0.0)


def clipped_surrogate(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, " B"],
    mask: Bool[Array, "B T"],
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> Float[Array, "B T"]:
    """min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) per token, rho = exp(logp - old_logp);
    zero at masked tokens (DeepSeekMath eq. 3; asymmetric clip from DAPO §3.1)."""
    rho = jnp.exp(jnp.where(mask, logp - old_logp, 0.0))
    adv = advantages[:, None]
    surrogate = jnp.minimum(rho * adv, jnp.clip(rho, 1.0 - eps_low, 1.0 + eps_high) * adv)
    return jnp.where(mask, surrogate, 0.0)


def aggregate(
    per_token: Float[Array, "B T"], mask: Bool[Array, "B T"], loss_type: str, group_size: int
) -> Float[Array, ""]:
    """Average masked per-token terms the way `loss_type` says (formulas in the module docstring).

    Rows are completions, G consecutive rows per prompt. A row with an all-False mask (a dropped
    group) counts in neither the numerator nor the denominator, except in dr_grpo's constant.
    """
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    m = mask.astype(per_token.dtype)
    total = per_token * m
    tokens = jnp.sum(m, axis=1)  # |o_i|
    kept = tokens > 0
    if loss_type == "grpo":
        per_seq = jnp.sum(total, axis=1) / jnp.maximum(tokens, 1.0)
        return jnp.sum(per_seq) / jnp.maximum(jnp.sum(kept), 1)
    if loss_type == "bnpo":
        return jnp.sum(total) / jnp.maximum(jnp.sum(m), 1.0)
    if loss_type == "dapo":
        group_sum = jnp.sum(total, axis=1).reshape(-1, group_size).sum(axis=1)
        group_tokens = tokens.reshape(-1, group_size).sum(axis=1)
        per_group = group_sum / jnp.maximum(group_tokens, 1.0)
        return jnp.sum(per_group) / jnp.maximum(jnp.sum(group_tokens > 0), 1)
    # dr_grpo: a constant denominator, the rows kept times the longest completion allowed
    kept_rows = jnp.maximum(jnp.sum(kept), 1)
    return jnp.sum(total) / (kept_rows * per_token.shape[1])


def grpo_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, " B"],
    mask: Bool[Array, "B T"],
    cfg: GRPOConfig,
    ref_logp: Float[Array, "B T"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The loss to minimise, -J, and diagnostics (KL, clip fraction, mean ratio).

    `mask` is the completion mask (True up to and including EOS); rows are grouped G at a time.
    """
    if cfg.ratio_level == "sequence":
        # One ratio per completion: the geometric mean of its token ratios (GSPO).
        m = mask.astype(logp.dtype)
        n = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
        seq_log_ratio = jnp.sum(jnp.where(mask, logp - old_logp, 0.0), axis=1, keepdims=True) / n
        logp_r, old_r = jnp.broadcast_to(seq_log_ratio, logp.shape), jnp.zeros_like(logp)
    else:
        logp_r, old_r = logp, old_logp
    objective = clipped_surrogate(logp_r, old_r, advantages, mask, cfg.epsilon_low, cfg.epsilon_high)
    kl = jnp.zeros_like(logp) if ref_logp is None else k3_kl(logp, ref_logp, mask)
    if ref_logp is not None and cfg.beta > 0:
        objective = objective - cfg.beta * kl
    loss = -aggregate(objective, mask, cfg.loss_type, cfg.group_size)
    rho = jnp.exp(jnp.where(mask, logp_r - old_r, 0.0))
    adv = advantages[:, None]
    clipped = ((adv > 0) & (rho > 1 + cfg.epsilon_high)) | ((adv < 0) & (rho < 1 - cfg.epsilon_low))
    n_tokens = jnp.maximum(jnp.sum(mask), 1)
    metrics = {
        "kl": jnp.sum(kl) / n_tokens,
        "clip_frac": jnp.sum(clipped & mask) / n_tokens,
        "ratio_mean": jnp.sum(jnp.where(mask, rho, 0.0)) / n_tokens,
    }
    return loss, metrics


# ----------------------------------------------------------------------------------- rollouts


@dataclass
class Rollouts:
    """A batch of completions, G consecutive rows per prompt, and everything the update needs."""

    examples: list[dict[str, str]]  # one per row (each prompt's row repeated G times)
    texts: list[str]  # decoded completions, cut at EOS
    prompt_tokens: np.ndarray  # (B, P) left-padded prompts
    prompt_mask: np.ndarray  # (B, P) False for padding
    tokens: np.ndarray  # (B, T) sampled tokens, PAD after EOS
    mask: np.ndarray  # (B, T) the completion mask: True up to and including EOS
    logprobs: np.ndarray  # (B, T) log-prob of each token under the sampling policy (temperature 1)
    rewards: np.ndarray  # (B,) the weighted sum of the reward functions
    components: dict[str, np.ndarray]  # (B,) each reward function's score


def completion_mask(tokens: Int[Array, "B T"], eos_id: int = CharTokenizer.EOS) -> np.ndarray:
    """True for every generated token up to and including the first EOS (all of them if none)."""
    tokens = np.asarray(tokens)
    T = tokens.shape[1]
    is_eos = tokens == eos_id
    ends = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, T)
    return np.arange(T)[None, :] < ends[:, None]


def score_rewards(
    examples: Sequence[Mapping[str, str]], texts: Sequence[str], reward_fns: Mapping[str, RewardFn],
    weights: Sequence[float],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each reward function on each (example, completion), and their weighted sum."""
    components = {name: np.array([fn(ex, t) for ex, t in zip(examples, texts, strict=True)],
                                 dtype=np.float32) for name, fn in reward_fns.items()}
    total = sum(w * c for w, c in zip(weights, components.values(), strict=True))
    return np.asarray(total, np.float32), components


def _reward_setup(cfg: GRPOConfig, reward_fns: Mapping[str, RewardFn] | None):
    """The reward functions and weights: cfg's named rewards, or the given functions, weight 1 each."""
    if reward_fns is None:
        return {name: REWARDS[name] for name in cfg.rewards}, list(cfg.reward_weights)
    if not reward_fns or not all(callable(fn) for fn in reward_fns.values()):
        raise ValueError("reward_fns must map names to callables reward(example, completion) -> float")
    return dict(reward_fns), [1.0] * len(reward_fns)


def sample_groups(
    model: Transformer, examples: Sequence[Mapping[str, str]], cfg: GRPOConfig, key: Array,
    reward_fns: Mapping[str, RewardFn] | None = None, tokenizer: CharTokenizer | None = None,
) -> Rollouts:
    """G completions per example, sampled with the KV-cache generator, then graded."""
    tokenizer = tokenizer or CharTokenizer()
    reward_fns, weights = _reward_setup(cfg, reward_fns)
    rows = [dict(ex) for ex in examples for _ in range(cfg.group_size)]
    prompts = [tokenizer.encode(ex["prompt"], bos=True) for ex in rows]
    gen = generate(model, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                   key=key)
    prompt_tokens, prompt_mask = left_pad(prompts, tokenizer.PAD)
    texts = [tokenizer.decode(row) for row in gen.tokens]
    rewards, components = score_rewards(rows, texts, reward_fns, weights)
    return Rollouts(rows, texts, prompt_tokens, prompt_mask, gen.tokens, completion_mask(gen.tokens),
                    gen.logprobs, rewards, components)


def _logprobs(model, prompt_tokens, prompt_mask, tokens, temperature):
    """log pi(o_t | q, o_<t) of each completion token, by one teacher-forced pass (B, T)."""
    B, P = prompt_tokens.shape
    seq = jnp.concatenate([prompt_tokens, tokens], axis=1)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones(tokens.shape, bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(key_mask.astype(jnp.int32), axis=1) - 1, 0)
    logits = model(seq, positions, key_mask=key_mask)[:, P - 1 : -1] / temperature  # (B, T, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


@nnx.jit
def score_completions(
    model: Transformer, prompt_tokens: Int[Array, "B P"], prompt_mask: Bool[Array, "B P"],
    tokens: Int[Array, "B T"], temperature: Array | float,
) -> Float[Array, "B T"]:
    """Per-token log-probs of the completions under `model` (for pi_old with mu > 1, and pi_ref).

    P is the left-padded prompt width; the logits are divided by the sampling temperature."""
    return _logprobs(model, prompt_tokens, prompt_mask, tokens, temperature)


@nnx.jit(static_argnames=("cfg",))
def grpo_step(model, optimizer, batch: dict[str, Array], cfg: GRPOConfig):
    """One gradient step on -J. With no "old_logp" in the batch (mu = 1) pi_old is pi_theta itself,
    held constant, so every ratio is exactly 1."""

    def loss_fn(model):
        logp = _logprobs(model, batch["prompt_tokens"], batch["prompt_mask"], batch["tokens"],
                         batch["temperature"])
        old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
        return grpo_loss(logp, old, batch["advantages"], batch["mask"], cfg, batch.get("ref_logp"))

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}


def make_grpo_optimizer(model: Transformer, cfg: GRPOConfig) -> nnx.Optimizer:
    """AdamW at a constant learning rate, gradients clipped by global norm."""
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(cfg.lr, b1=0.9, b2=0.99, weight_decay=cfg.weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


# --------------------------------------------------------------------------------- evaluation


def evaluate_policy(
    model: Transformer, examples: Sequence[Mapping[str, str]], *, template: str = "r1",
    max_new_tokens: int = 32, k: int = 0, temperature: float = 1.0, key: Array | None = None,
    tokenizer: CharTokenizer | None = None,
) -> dict[str, float]:
    """Greedy accuracy and format rate on held-out examples, and pass@k (any of k samples right)."""
    _check_choice("template", template, TEMPLATES)
    tokenizer = tokenizer or CharTokenizer()
    acc_fn = REWARDS["accuracy" if template == "r1" else "plain_accuracy"]
    prompts = [tokenizer.encode(ex["prompt"], bos=True) for ex in examples]
    greedy = [tokenizer.decode(r) for r in generate(model, prompts, max_new_tokens=max_new_tokens).tokens]
    out = {"accuracy": float(np.mean([acc_fn(ex, t) for ex, t in zip(examples, greedy, strict=True)])),
           "format_rate": float(np.mean([format_reward(ex, t) for ex, t in zip(examples, greedy, strict=True)]))}
    if k > 0:
        key = jax.random.key(0) if key is None else key
        gen = generate(model, [p for p in prompts for _ in range(k)], max_new_tokens=max_new_tokens,
                       temperature=temperature, key=key)
        hits = np.array([acc_fn(examples[i // k], tokenizer.decode(r)) for i, r in enumerate(gen.tokens)])
        out[f"pass@{k}"] = float(hits.reshape(-1, k).max(axis=1).mean())
        out["sample_accuracy"] = float(hits.mean())
    return out


# ------------------------------------------------------------------------------------ trainer


@dataclass
class GRPOHistory:
    """Per-step training metrics, and held-out evaluations at `eval_step`."""

    step: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # of the sampled completions
    format_rate: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    clip_frac: list[float] = field(default_factory=list)
    completion_len: list[float] = field(default_factory=list)  # tokens, EOS included
    zero_adv_frac: list[float] = field(default_factory=list)  # groups whose rewards are all equal
    loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval: list[dict[str, float]] = field(default_factory=list)
    gen_seconds: float = 0.0  # sampling and grading
    update_seconds: float = 0.0  # scoring (pi_ref, pi_old) and the mu updates
    seconds: float = 0.0  # the steps, not counting evaluations

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_grpo(
    model: Transformer,
    train_examples: Sequence[Mapping[str, str]],
    cfg: GRPOConfig = GRPOConfig(),
    *,
    eval_examples: Sequence[Mapping[str, str]] | None = None,
    reward_fns: Mapping[str, RewardFn] | None = None,
    ckpt_dir: Path | str | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> GRPOHistory:
    """Improve `model` in place with GRPO on `train_examples`' prompts; returns the history.

    `reward_fns` (name -> function) replaces the rewards named in `cfg` (weights then 1 each). With
    `eval_examples`, evaluates before step 0, every `cfg.eval_every` steps and at the end.
    """
    from minids.train import _progress_bar, save_checkpoint

    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    if len(train_examples) < cfg.prompts_per_step:
        raise ValueError(f"prompts_per_step ({cfg.prompts_per_step}) must not exceed the number of "
                         f"training prompts ({len(train_examples)})")
    _reward_setup(cfg, reward_fns)  # validate before any work
    acc_name = "accuracy" if cfg.template == "r1" else "plain_accuracy"
    optimizer = make_grpo_optimizer(model, cfg)
    ref_model = nnx.clone(model) if cfg.beta > 0 else None
    history = GRPOHistory()
    key = jax.random.key(cfg.seed)
    temperature = jnp.float32(cfg.temperature)

    eval_seconds = 0.0

    def run_eval(step):
        nonlocal eval_seconds
        if eval_examples:
            t = time.perf_counter()
            m = evaluate_policy(model, eval_examples, template=cfg.template, k=cfg.eval_k,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                key=jax.random.fold_in(key, 10**9 + step))
            history.eval_step.append(step)
            history.eval.append(m)
            eval_seconds += time.perf_counter() - t

    run_eval(0)
    eval_seconds, t_start = 0.0, time.perf_counter()
    for step in _progress_bar(range(cfg.steps), disable=not progress):
        idx = np.random.default_rng([cfg.seed, step]).choice(len(train_examples), cfg.prompts_per_step,
                                                               replace=False)
        t0 = time.perf_counter()
        roll = sample_groups(model, [train_examples[i] for i in idx], cfg,
                             jax.random.fold_in(key, step), reward_fns)
        grouped = jnp.asarray(roll.rewards.reshape(-1, cfg.group_size))
        advantages = group_advantages(grouped, cfg.scale_rewards, cfg.adv_eps).reshape(-1)
        equal = np.ptp(roll.rewards.reshape(-1, cfg.group_size), axis=1) == 0
        mask = roll.mask
        if cfg.drop_equal_groups:  # DAPO's filter: those groups leave the loss altogether
            mask = mask & ~np.repeat(equal, cfg.group_size)[:, None]
        batch = {"prompt_tokens": jnp.asarray(roll.prompt_tokens),
                 "prompt_mask": jnp.asarray(roll.prompt_mask), "tokens": jnp.asarray(roll.tokens),
                 "mask": jnp.asarray(mask), "advantages": advantages, "temperature": temperature}
        jax.block_until_ready(advantages)
        t1 = time.perf_counter()  # sampling and grading above; scoring and updating below
        seqs = (batch["prompt_tokens"], batch["prompt_mask"], batch["tokens"], temperature)
        if ref_model is not None:
            batch["ref_logp"] = score_completions(ref_model, *seqs)
        if cfg.mu > 1:
            batch["old_logp"] = score_completions(model, *seqs)
        for _ in range(cfg.mu):
            metrics = grpo_step(model, optimizer, batch, cfg)
        metrics = {k: float(v) for k, v in metrics.items()}
        t2 = time.perf_counter()
        history.gen_seconds += t1 - t0
        history.update_seconds += t2 - t1
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"non-finite GRPO loss at step {step}: {metrics}")
        if ref_model is not None and cfg.ref_refresh_every and (step + 1) % cfg.ref_refresh_every == 0:
            nnx.update(ref_model, nnx.state(model))
        pairs = list(zip(roll.examples, roll.texts, strict=True))
        row = {"reward": float(roll.rewards.mean()),
               "accuracy": float(np.mean([REWARDS[acc_name](ex, t) for ex, t in pairs])),
               "format_rate": float(np.mean([format_reward(ex, t) for ex, t in pairs])),
               "kl": metrics["kl"], "clip_frac": metrics["clip_frac"],
               "completion_len": float(roll.mask.sum(axis=1).mean()),
               "zero_adv_frac": float(equal.mean()), "loss": metrics["loss"]}
        history.step.append(step)
        for name, value in row.items():
            getattr(history, name).append(value)
        if callback is not None:
            callback(step, row)
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            run_eval(done)
        if ckpt_dir is not None and cfg.ckpt_every and done % cfg.ckpt_every == 0:
            save_checkpoint(ckpt_dir, model, step=done, history=history, train_cfg=cfg)
    history.seconds = time.perf_counter() - t_start - eval_seconds
    run_eval(cfg.steps)
    if ckpt_dir is not None:
        save_checkpoint(ckpt_dir, model, step=cfg.steps, history=history, train_cfg=cfg)
    return history

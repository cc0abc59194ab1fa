"""GRPO's trainer: sample a group of answers per prompt, grade them, turn grades into advantages, update.

The objective (DeepSeekMath eq. 3: group advantages, the clipped ratio, the k3 KL and the ways of
averaging the per-token terms) is `minids.grpo`. This module is the loop around it, R1-Zero's
recipe (R1 §2.2) one stage at a time:

1. Rollouts (`sample_groups`). Each of `prompts_per_step` prompts is repeated G times and the jitted
   KV-cache generator (`minids.generate`) samples one completion per row at `temperature`, keeping
   the log-prob of every sampled token. `completion_mask` marks each completion's tokens up to and
   including its EOS; what follows is padding that the loss never sees.
2. Scoring (`score_rewards`). Rule-based rewards from `minids.rewards` (is the answer right? is it
   in the asked-for format?) grade each completion; their weighted sum is r_i. No reward model and
   no critic: the group is the baseline.
3. Advantages. `minids.grpo.group_advantages` compares each r_i with the rest of its group.
4. Update (`grpo_step`, one compiled AdamW step, run mu times on the same rollouts). A
   teacher-forced pass over prompt + completion gives log pi_theta of every completion token and the
   gradient of `minids.grpo.grpo_loss`. `score_completions` makes the same pass without a gradient
   for pi_old (needed only when mu > 1; with mu = 1 pi_old is pi_theta itself, held constant) and for
   the frozen reference pi_ref (only when beta > 0).

`train_grpo` runs that loop `steps` times. It logs mean reward, accuracy and format rate of the
sampled completions, KL, clip fraction, completion length and the share of groups whose rewards are
all equal (zero advantage, nothing learned) into a `GRPOHistory`; it times sampling apart from
updating; and it evaluates held-out prompts (`evaluate_policy`: greedy accuracy, format rate,
pass@k) before the first step, every `eval_every` steps and after the last.

`GRPOConfig` holds every knob. Each field carries its default and a one-line help in its metadata,
the single source that `python -m minids grpo --help` reads its options from.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, no_type_check

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.checkpoint import (
    KEEP,
    Interrupted,
    SaveSchedule,
    holds_checkpoint,
    restore_into,
    save_checkpoint,
    stop_requests,
)
from minids.config import check_bool, check_choice, check_int, check_number
from minids.data import CharTokenizer, check_vocab
from minids.generate import generate, left_pad
from minids.grpo import (
    LOSS_TYPES,
    RATIO_LEVELS,
    SCALE_REWARDS,
    LossSettings,
    group_advantages,
    grpo_loss,
)
from minids.model import Transformer
from minids.rewards import REWARDS, TEMPLATES, RewardFn, format_reward
from minids.train import progress_bar


@no_type_check  # validated in __post_init__ (minids.config's check_* functions)
@dataclass(frozen=True)
class GRPOConfig:
    """Everything a GRPO run needs besides the model and the prompts; validated when made.

    Each field's metadata holds its help text (and its choices), which the CLI shows as they are.
    """

    steps: int = field(default=80, metadata={"help": "steps of: sample, grade, update mu times"})
    prompts_per_step: int = field(default=16, metadata={"help": "prompts per step, G samples each"})
    group_size: int = field(default=8, metadata={"help": "G, completions per prompt"})
    mu: int = field(
        default=1, metadata={"help": "updates per batch of rollouts (> 1: the clip acts)"}
    )
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (constant)"})
    beta: float = field(default=0.0, metadata={"help": "k3 KL weight (0: no reference model)"})
    ref_refresh_every: int = field(
        default=0, metadata={"help": "copy the policy into the reference every N steps (0: never)"}
    )
    epsilon_low: float = field(default=0.2, metadata={"help": "clip the ratio at 1 - epsilon_low"})
    epsilon_high: float = field(
        default=0.2,
        metadata={"help": "clip the ratio at 1 + epsilon_high (DAPO's clip-higher: 0.28)"},
    )
    loss_type: str = field(
        default="grpo",
        metadata={"help": "how per-token terms are averaged (minids.grpo)", "choices": LOSS_TYPES},
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "divide advantages by the std of the group, the batch, or not at all",
            "choices": SCALE_REWARDS,
        },
    )
    ratio_level: str = field(
        default="token",
        metadata={
            "help": "a ratio per token, or one per completion (GSPO)",
            "choices": RATIO_LEVELS,
        },
    )
    drop_equal_groups: bool = field(
        default=False, metadata={"help": "DAPO's filter: groups of equal rewards leave the loss"}
    )
    adv_eps: float = field(default=1e-4, metadata={"help": "the eps in (r - mean) / (std + eps)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of rollouts"})
    max_new_tokens: int = field(
        default=44, metadata={"help": "longest completion (an R1-template sum needs up to 42)"}
    )
    template: str = field(
        default="r1",
        metadata={
            "help": "r1: answer inside <answer> tags; plain: the completion is the answer",
            "choices": TEMPLATES,
        },
    )
    rewards: tuple[str, ...] = field(
        default=("accuracy", "format"), metadata={"help": "names in minids.rewards.REWARDS"}
    )
    reward_weights: tuple[float, ...] = field(
        default=(1.0, 0.5), metadata={"help": "one per reward; r_i is the weighted sum"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradients' global norm"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    eval_every: int = field(
        default=0, metadata={"help": "evaluate held-out prompts every N steps (0: before, after)"}
    )
    eval_k: int = field(default=8, metadata={"help": "k of pass@k (0: greedy only)"})
    ckpt_every: int = field(
        default=20,
        metadata={"help": "with a checkpoint folder: save every N steps (0: not by count)"},
    )
    ckpt_minutes: float = field(
        default=5.0,
        metadata={
            "help": "with a checkpoint folder: also save when N minutes have passed (0: not by time)"
        },
    )
    ckpt_keep: int = field(
        default=KEEP, metadata={"help": "checkpoints kept: the latest and those just before it"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the prompt choice and the sampling"})

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "mu", "max_new_tokens"):
            check_int(name, getattr(self, name), 1)
        check_int("group_size (advantages compare the completions of a group)", self.group_size, 2)
        for name in ("ref_refresh_every", "eval_every", "eval_k", "ckpt_every", "seed"):
            check_int(name, getattr(self, name), 0)
        check_number("lr", self.lr, 0.0, 1.0, low_open=True, high_open=True)
        check_number("beta", self.beta, 0.0)
        check_number("epsilon_low", self.epsilon_low, 0.0, 1.0, low_open=True, high_open=True)
        check_number("epsilon_high", self.epsilon_high, 0.0, low_open=True)
        check_number("adv_eps", self.adv_eps, 0.0)
        check_number("temperature", self.temperature, 0.0, low_open=True)
        check_number("grad_clip", self.grad_clip, 0.0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0.0, 1.0, high_open=True)
        check_number("ckpt_minutes", self.ckpt_minutes, 0.0)
        check_int("ckpt_keep", self.ckpt_keep, 1)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        check_choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        check_choice("template", self.template, TEMPLATES)
        check_bool("drop_equal_groups", self.drop_equal_groups)
        if not isinstance(self.rewards, tuple) or not self.rewards:
            raise ValueError(f"rewards must be a non-empty tuple of names, got {self.rewards!r}")
        for name in self.rewards:
            check_choice("rewards", name, tuple(REWARDS))
        n = len(self.rewards)
        if not isinstance(self.reward_weights, tuple) or len(self.reward_weights) != n:
            raise ValueError(
                f"reward_weights must be a tuple with one weight per reward ({n}), "
                f"got {self.reward_weights!r}"
            )
        for w in self.reward_weights:
            check_number("reward_weights", w)


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


def completion_mask(
    tokens: Int[Array | np.ndarray, "B T"], eos_id: int = CharTokenizer.EOS
) -> np.ndarray:
    """True for every generated token up to and including the first EOS (all of them if none)."""
    tokens = np.asarray(tokens)
    T = tokens.shape[1]
    is_eos = tokens == eos_id
    ends = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, T)
    return np.arange(T)[None, :] < ends[:, None]


def score_rewards(
    examples: Sequence[Mapping[str, str]],
    texts: Sequence[str],
    reward_fns: Mapping[str, RewardFn],
    weights: Sequence[float],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each reward function on each (example, completion), and their weighted sum."""
    components = {
        name: np.array([fn(ex, t) for ex, t in zip(examples, texts, strict=True)], dtype=np.float32)
        for name, fn in reward_fns.items()
    }
    total = sum(w * c for w, c in zip(weights, components.values(), strict=True))
    return np.asarray(total, np.float32), components


def _reward_setup(cfg: GRPOConfig, reward_fns: Mapping[str, RewardFn] | None):
    """The reward functions and weights: cfg's named rewards, or the given functions, weight 1 each."""
    if reward_fns is None:
        return {name: REWARDS[name] for name in cfg.rewards}, list(cfg.reward_weights)
    if not reward_fns or not all(callable(fn) for fn in reward_fns.values()):
        raise ValueError(
            "reward_fns must map names to callables reward(example, completion) -> float"
        )
    return dict(reward_fns), [1.0] * len(reward_fns)


def sample_groups(
    model: Transformer,
    examples: Sequence[Mapping[str, str]],
    cfg: GRPOConfig,
    key: Array,
    reward_fns: Mapping[str, RewardFn] | None = None,
    tokenizer: CharTokenizer | None = None,
) -> Rollouts:
    """G completions per example, sampled with the KV-cache generator, then graded."""
    tokenizer = tokenizer or CharTokenizer()
    check_vocab(model.cfg.vocab_size, tokenizer)
    reward_fns, weights = _reward_setup(cfg, reward_fns)
    rows = [dict(ex) for ex in examples for _ in range(cfg.group_size)]
    prompts = [tokenizer.encode(ex["prompt"], bos=True) for ex in rows]
    gen = generate(
        model, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, key=key
    )
    prompt_tokens, prompt_mask = left_pad(prompts, tokenizer.PAD)
    texts = [tokenizer.decode(row) for row in gen.tokens]
    rewards, components = score_rewards(rows, texts, reward_fns, weights)
    return Rollouts(
        rows,
        texts,
        prompt_tokens,
        prompt_mask,
        gen.tokens,
        completion_mask(gen.tokens),
        gen.logprobs,
        rewards,
        components,
    )


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
    model: Transformer,
    prompt_tokens: Int[Array, "B P"],
    prompt_mask: Bool[Array, "B P"],
    tokens: Int[Array, "B T"],
    temperature: Array | float,
) -> Float[Array, "B T"]:
    """Per-token log-probs of the completions under `model` (for pi_old with mu > 1, and pi_ref).

    P is the left-padded prompt width; the logits are divided by the sampling temperature."""
    return _logprobs(model, prompt_tokens, prompt_mask, tokens, temperature)


class LossFields(NamedTuple):
    """The fields of a GRPOConfig that the loss reads (`minids.grpo.LossSettings`), and no others."""

    group_size: int
    loss_type: str
    ratio_level: str
    epsilon_low: float
    epsilon_high: float
    beta: float

    @classmethod
    def of(cls, cfg: LossSettings) -> LossFields:
        return cls(*(getattr(cfg, name) for name in cls._fields))


@nnx.jit(static_argnames=("cfg",))
def grpo_step(model, optimizer, batch: dict[str, Array], cfg: LossSettings):
    """One gradient step on -J. With no "old_logp" in the batch (mu = 1) pi_old is pi_theta itself,
    held constant, so every ratio is exactly 1.

    `cfg` is compiled in (static): pass `LossFields.of(cfg)`, as the trainer does, so that runs that
    differ only in seed or number of steps share one compiled step."""

    def loss_fn(model):
        logp = _logprobs(
            model,
            batch["prompt_tokens"],
            batch["prompt_mask"],
            batch["tokens"],
            batch["temperature"],
        )
        old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
        return grpo_loss(logp, old, batch["advantages"], batch["mask"], cfg, batch.get("ref_logp"))

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}


def make_grpo_optimizer(model: Transformer, cfg: GRPOConfig) -> nnx.Optimizer:
    """AdamW at a constant learning rate, gradients clipped by global norm."""
    return nnx.Optimizer(model, _transform(cfg.lr, cfg.weight_decay, cfg.grad_clip), wrt=nnx.Param)


@functools.cache
def _transform(lr: float, weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
    # One transform object per setting: nnx.jit compiles it into `grpo_step`, so runs that differ
    # only in seed or steps share one compiled step (as `minids.train.make_optimizer` does).
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(lr, b1=0.9, b2=0.99, weight_decay=weight_decay),
    )


# --------------------------------------------------------------------------------- evaluation


def evaluate_policy(
    model: Transformer,
    examples: Sequence[Mapping[str, str]],
    *,
    template: str = "r1",
    max_new_tokens: int = GRPOConfig.max_new_tokens,
    k: int = 0,
    temperature: float = 1.0,
    key: Array | None = None,
    tokenizer: CharTokenizer | None = None,
) -> dict[str, float]:
    """Greedy accuracy and format rate on held-out examples, and pass@k (any of k samples right)."""
    check_choice("template", template, TEMPLATES)
    tokenizer = tokenizer or CharTokenizer()
    check_vocab(model.cfg.vocab_size, tokenizer)
    acc_fn = REWARDS["accuracy" if template == "r1" else "plain_accuracy"]
    prompts = [tokenizer.encode(ex["prompt"], bos=True) for ex in examples]
    greedy = [
        tokenizer.decode(r) for r in generate(model, prompts, max_new_tokens=max_new_tokens).tokens
    ]
    out = {
        "accuracy": float(np.mean([acc_fn(ex, t) for ex, t in zip(examples, greedy, strict=True)])),
        "format_rate": float(
            np.mean([format_reward(ex, t) for ex, t in zip(examples, greedy, strict=True)])
        ),
    }
    if k > 0:
        key = jax.random.key(0) if key is None else key
        gen = generate(
            model,
            [p for p in prompts for _ in range(k)],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            key=key,
        )
        hits = np.array(
            [acc_fn(examples[i // k], tokenizer.decode(r)) for i, r in enumerate(gen.tokens)]
        )
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GRPOHistory:
        return cls(**d)


def train_grpo(
    model: Transformer,
    train_examples: Sequence[Mapping[str, str]],
    cfg: GRPOConfig = GRPOConfig(),
    *,
    eval_examples: Sequence[Mapping[str, str]] | None = None,
    reward_fns: Mapping[str, RewardFn] | None = None,
    ckpt_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> GRPOHistory:
    """Improve `model` in place with GRPO on `train_examples`' prompts; returns the history.

    `reward_fns` (name -> function) replaces the rewards named in `cfg` (weights then 1 each). With
    `eval_examples`, evaluates before step 0, every `cfg.eval_every` steps and at the end.
    `ckpt_dir`: save there as `minids.train.fit` does (every `cfg.ckpt_every` steps or
    `cfg.ckpt_minutes` minutes, the last `cfg.ckpt_keep` kept, and on SIGINT/SIGTERM, which then
    raise `Interrupted`); a checkpoint holds the policy, its optimizer and the reference model, so
    `resume=True` continues a run exactly: each step's prompts and samples depend on (seed, step).
    """
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    if len(train_examples) < cfg.prompts_per_step:
        raise ValueError(
            f"prompts_per_step ({cfg.prompts_per_step}) must not exceed the number of "
            f"training prompts ({len(train_examples)})"
        )
    _reward_setup(cfg, reward_fns)  # validate before any work
    acc_name = "accuracy" if cfg.template == "r1" else "plain_accuracy"
    optimizer = make_grpo_optimizer(model, cfg)
    ref_model = nnx.clone(model) if cfg.beta > 0 else None
    extras = {"ref": ref_model} if ref_model is not None else None
    history, start = GRPOHistory(), 0
    if resume:
        if ckpt_dir is None or not holds_checkpoint(ckpt_dir):
            raise ValueError(
                f"resume=True needs a ckpt_dir that holds a checkpoint, got {ckpt_dir!r}"
            )
        meta = restore_into(ckpt_dir, model, optimizer, extras=extras)
        start, history = meta["step"], GRPOHistory.from_dict(meta["history"])
    key = jax.random.key(cfg.seed)
    temperature = jnp.float32(cfg.temperature)

    eval_seconds = 0.0

    def run_eval(step):
        nonlocal eval_seconds
        if eval_examples:
            t = time.perf_counter()
            m = evaluate_policy(
                model,
                eval_examples,
                template=cfg.template,
                k=cfg.eval_k,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                key=jax.random.fold_in(key, 10**9 + step),
            )
            history.eval_step.append(step)
            history.eval.append(m)
            eval_seconds += time.perf_counter() - t

    def save(step):
        save_checkpoint(
            ckpt_dir,
            model,
            optimizer,
            step=step,
            history=history,
            train_cfg=cfg,
            keep=cfg.ckpt_keep,
            extras=extras,
        )
        schedule.saved()

    if start == 0:
        run_eval(0)
    schedule = SaveSchedule(cfg.ckpt_every, cfg.ckpt_minutes)
    eval_seconds, t_start = 0.0, time.perf_counter()
    loss_fields = LossFields.of(cfg)  # what the compiled step depends on: not the seed or steps
    bar = progress_bar(
        range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress
    )
    with stop_requests(enabled=ckpt_dir is not None) as stop:
        for step in bar:
            row = _grpo_iteration(
                model, optimizer, ref_model, train_examples, cfg, key, step, reward_fns,
                loss_fields, temperature, acc_name, history,
            )  # fmt: skip
            history.step.append(step)
            for name, value in row.items():
                getattr(history, name).append(value)
            if callback is not None:
                callback(step, row)
            done = step + 1
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                run_eval(done)
            if stop.signal_name:  # SIGINT/SIGTERM: this step is done; save it and stop
                bar.close()
                history.seconds += time.perf_counter() - t_start - eval_seconds
                save(done)
                raise Interrupted(stop.signal_name, done, Path(ckpt_dir), history)
            if ckpt_dir is not None and done < cfg.steps and schedule.due(done):
                save(done)
    history.seconds += time.perf_counter() - t_start - eval_seconds
    if start < cfg.steps:
        run_eval(cfg.steps)
        if ckpt_dir is not None:
            save(cfg.steps)
    return history


def _grpo_iteration(
    model, optimizer, ref_model, train_examples, cfg, key, step, reward_fns, loss_fields,
    temperature, acc_name, history,
) -> dict[str, float]:  # fmt: skip
    """One GRPO step: sample groups, grade, advantages, mu updates; returns the step's metrics."""
    idx = np.random.default_rng([cfg.seed, step]).choice(
        len(train_examples), cfg.prompts_per_step, replace=False
    )
    t0 = time.perf_counter()
    roll = sample_groups(
        model, [train_examples[i] for i in idx], cfg, jax.random.fold_in(key, step), reward_fns
    )
    grouped = jnp.asarray(roll.rewards.reshape(-1, cfg.group_size))
    advantages = group_advantages(grouped, cfg.scale_rewards, cfg.adv_eps).reshape(-1)
    equal = np.ptp(roll.rewards.reshape(-1, cfg.group_size), axis=1) == 0
    mask = roll.mask
    if cfg.drop_equal_groups:  # DAPO's filter: those groups leave the loss altogether
        mask = mask & ~np.repeat(equal, cfg.group_size)[:, None]
    batch = {
        "prompt_tokens": jnp.asarray(roll.prompt_tokens),
        "prompt_mask": jnp.asarray(roll.prompt_mask),
        "tokens": jnp.asarray(roll.tokens),
        "mask": jnp.asarray(mask),
        "advantages": advantages,
        "temperature": temperature,
    }
    jax.block_until_ready(advantages)
    t1 = time.perf_counter()  # sampling and grading above; scoring and updating below
    seqs = (batch["prompt_tokens"], batch["prompt_mask"], batch["tokens"], temperature)
    if ref_model is not None:
        batch["ref_logp"] = score_completions(ref_model, *seqs)
    if cfg.mu > 1:
        batch["old_logp"] = score_completions(model, *seqs)
    for _ in range(cfg.mu):
        metrics = grpo_step(model, optimizer, batch, loss_fields)
    metrics = {k: float(v) for k, v in metrics.items()}
    t2 = time.perf_counter()
    history.gen_seconds += t1 - t0
    history.update_seconds += t2 - t1
    if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(f"non-finite GRPO loss at step {step}: {metrics}")
    refresh = cfg.ref_refresh_every and (step + 1) % cfg.ref_refresh_every == 0
    if ref_model is not None and refresh:
        nnx.update(ref_model, nnx.state(model))
    pairs = list(zip(roll.examples, roll.texts, strict=True))
    return {
        "reward": float(roll.rewards.mean()),
        "accuracy": float(np.mean([REWARDS[acc_name](ex, t) for ex, t in pairs])),
        "format_rate": float(np.mean([format_reward(ex, t) for ex, t in pairs])),
        "kl": metrics["kl"],
        "clip_frac": metrics["clip_frac"],
        "completion_len": float(roll.mask.sum(axis=1).mean()),
        "zero_adv_frac": float(equal.mean()),
        "loss": metrics["loss"],
    }

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
and AIME pass@1 went from 15.6% to 71.0%. Later work changed the details; these fields of
`minids.grpo_trainer.GRPOConfig` select them:

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

This module is the objective and nothing else: pure functions of log-probs, rewards and masks, no
model and no sampling. `grpo_loss` reads its knobs from any object that has them (`LossSettings`;
a `GRPOConfig` does). Everything around it (sampling the groups with the KV-cache generator,
grading them, the update loop that runs `grpo_loss` mu times per batch, held-out evaluation, and
`GRPOConfig` itself) is `minids.grpo_trainer`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from minids.config import check_choice

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
RATIO_LEVELS = ("token", "sequence")


@runtime_checkable
class LossSettings(Protocol):
    """What `grpo_loss` reads from its config (a `minids.grpo_trainer.GRPOConfig` has all of it)."""

    group_size: int  # G: rows come G at a time, the completions of one prompt
    loss_type: str  # one of LOSS_TYPES
    ratio_level: str  # one of RATIO_LEVELS
    epsilon_low: float
    epsilon_high: float
    beta: float  # weight of the k3 KL; 0 leaves it out


# ---------------------------------------------------------------------------- the objective


def group_advantages(
    rewards: Float[Array, "B G"], scale: str = "group", eps: float = 1e-4
) -> Float[Array, "B G"]:
    """A_i = (r_i - mean of its group) / (std + eps) (DeepSeekMath §4.1.2), one row per prompt.

    scale "group": the std of the row (population std, ddof 0); "batch": the std of all rewards;
    "none": no division (Dr. GRPO). A row of equal rewards gives zeros in every case.
    """
    check_choice("scale", scale, SCALE_REWARDS)
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
    eps_low: float | Float[Array, ""] = 0.2,
    eps_high: float | Float[Array, ""] = 0.2,
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
    check_choice("loss_type", loss_type, LOSS_TYPES)
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
    cfg: LossSettings,
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
    objective = clipped_surrogate(
        logp_r, old_r, advantages, mask, cfg.epsilon_low, cfg.epsilon_high
    )
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

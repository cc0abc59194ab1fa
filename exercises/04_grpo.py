"""Exercise 04: the three pieces of GRPO's objective.

GRPO (DeepSeekMath §4.1, eq. 3; the RL of DeepSeek-R1-Zero) samples G completions for each prompt,
grades each with a rule (is the answer right? is the format right?) and then nudges the model
towards the completions that did better than their group. No value network: the group is the
baseline. You will write the three pieces of its objective, in plain JAX:

1. `group_advantages`: how much better each completion did than the others of its group.
2. `clipped_surrogate`: PPO's clipped, importance-weighted advantage, per token.
3. `k3_kl`: a per-token estimate of the KL divergence to a frozen reference model.
   (Notebook 04 writes these three inline.) Then the next pieces, which it only calls:
4. `completion_mask`: which sampled tokens belong to the completion (up to the first EOS).
5. `aggregate`: how the per-token terms become one loss: GRPO's per-sequence mean, or the
   token-level means of BNPO and DAPO, or Dr. GRPO's constant denominator. The choice decides
   whether a long wrong answer is punished more or less than a short one.

Points: 32 in all (group_advantages, clipped_surrogate and k3_kl 15, completion_mask 5,
aggregate 12); a check is worth 1 point unless its line below says 2.

Shapes use one set of letters: B rows (prompts for the rewards, completions for the per-token
terms), G completions per prompt, T completion tokens.

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_04_grpo.py` (`-x` stops at the first failure,
  `-k kl` runs only the KL checks). Every failure message says what was expected.
- No Python loops are needed: `jnp.mean(..., axis=1, keepdims=True)`, `jnp.clip`, `jnp.minimum`
  and `jnp.where` do it all.
- Your code must work under `jax.jit` and `jax.grad`, so use `jnp`, not `np`, on the inputs.

When all checks pass, compare with `minids/grpo.py` (`group_advantages`, `clipped_surrogate`,
`k3_kl`, and `grpo_loss`, which puts them together), the grader's answer key.
"""

from __future__ import annotations

import jax  # noqa: F401  (you may want jax.nn)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
import numpy as np  # noqa: F401  (completion_mask works on numpy arrays)
from jaxtyping import Array, Bool, Float, Int

from minids.data import CharTokenizer


def group_advantages(
    rewards: Float[Array, "B G"], scale: str = "group", eps: float = 1e-4
) -> Float[Array, "B G"]:
    """Each completion's advantage over its group (DeepSeekMath §4.1.2, outcome supervision).

    Row b holds the rewards r_1..r_G of the G completions of prompt b. The advantage of completion i
    is its reward minus the mean of its row, divided by a spread:

        scale "group":  A_i = (r_i - mean(row)) / (std(row) + eps)     GRPO
        scale "batch":  A_i = (r_i - mean(row)) / (std(all rewards) + eps)
        scale "none":   A_i =  r_i - mean(row)                          Dr. GRPO (Liu et al., 2025)

    std is the population standard deviation (`jnp.std`, ddof 0). Example: rewards [1, 0, 0, 1]
    have mean 0.5 and std 0.5, so with eps = 0 the advantages are [1, -1, -1, 1].

    A row whose rewards are all equal (every completion right, or every one wrong) teaches nothing:
    its advantages must be exactly 0, even with eps = 0 (where a naive 0 / 0 gives NaN). Test
    whether a row is constant with its max and min rather than trusting mean and std, which can be
    off by a rounding error.

    Args:
        rewards: (B, G) float32.
        scale: "group", "batch" or "none".
        eps: added to the std, so that a tiny spread does not blow the advantages up.

    Returns:
        (B, G) float32 advantages.

    The grader checks (1 point per check): shape and dtype; the example above and an uneven group; exact zeros for an
    equal group, with and without eps; each `scale`; that eps is used.
    """
    raise NotImplementedError


def clipped_surrogate(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, " B"],
    mask: Bool[Array, "B T"],
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> Float[Array, "B T"]:
    """PPO's clipped surrogate per token, the term GRPO maximises (DeepSeekMath eq. 3).

    logp[b, t] is log pi_theta of token t of completion b under the model being trained; old_logp
    the same under the policy that sampled it. Their ratio rho = exp(logp - old_logp) says how much
    more likely the token has become. With A the completion's advantage (one per row):

        surrogate = min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)

    The min makes the clip one-sided: with A > 0 the gain stops growing once rho > 1 + eps_high;
    with A < 0 once rho < 1 - eps_low; in the other direction nothing is clipped, so a mistake can
    always be corrected. DAPO (Yu et al., 2025) raises eps_high above eps_low ("clip-higher").

    `mask` is False for padding (the slots after a completion's end of sequence). Padding must give
    exactly 0, and no NaN or inf in the value or the gradient, whatever logp holds there: zero the
    log-ratio at masked tokens *before* the exp (exp(80) is fine, exp(800) is inf, and inf * 0 is
    NaN), then zero the result.

    Args:
        logp, old_logp: (B, T) float32 log-probabilities of the sampled tokens.
        advantages: (B,) one advantage per completion; broadcast it over T yourself (`[:, None]`).
        mask: (B, T) bool.
        eps_low, eps_high: the clip range is [1 - eps_low, 1 + eps_high].

    Returns:
        (B, T) float32 surrogate values (to be maximised), 0 at masked tokens.

    The grader checks (1 point per check): rho = 1 gives A; hand-computed ratios inside and outside the clip range for
    A > 0 and A < 0; clip-higher; masked padding with huge values; the gradient (rho * A inside the
    range, 0 where clipped and at padding); `jax.jit`.
    """
    raise NotImplementedError


def k3_kl(
    logp: Float[Array, "B T"], ref_logp: Float[Array, "B T"], mask: Bool[Array, "B T"]
) -> Float[Array, "B T"]:
    """Schulman's "k3" estimate of KL(pi_theta || pi_ref) per token, as GRPO uses it (DeepSeekMath
    eq. 4):

        d = ref_logp - logp          (log of pi_ref / pi_theta at the sampled token)
        kl = exp(d) - d - 1

    Because e^d >= 1 + d for every d, kl >= 0, and it is 0 exactly when the two policies give the
    token the same probability. Averaged over tokens sampled from pi_theta it is an unbiased
    estimate of the KL with a lower variance than -d alone. Example: d = log 2 gives 2 - log 2 - 1.

    Masked (padding) tokens give exactly 0, with no NaN or inf in the value or the gradient: zero
    d at masked tokens before the exp, as in `clipped_surrogate`.

    Args:
        logp, ref_logp: (B, T) float32.
        mask: (B, T) bool.

    Returns:
        (B, T) float32, >= 0, 0 at masked tokens.

    The grader checks (1 point per check): the example above and its mirror (d = -log 2); zero for equal policies;
    non-negative on random inputs; masked padding; the gradient 1 - exp(d) with respect to logp.
    """
    raise NotImplementedError


def completion_mask(
    tokens: Int[Array | np.ndarray, "B T"], eos_id: int = CharTokenizer.EOS
) -> np.ndarray:
    """True for every sampled token up to and including the first EOS; all True if there is none.

    The sampler always writes T tokens per completion, but a completion ends at its first EOS:
    what follows is padding the policy never chose to write, and must not enter the loss.

        tokens = [[5, 7, EOS, 9, 9],      ->  [[True, True, True, False, False],
                  [5, 5, 5, 5, 5]]             [True, True, True, True, True]]

    Args: tokens (B, T) integers (numpy or jnp); eos_id the end-of-sequence id.
    Returns: a numpy bool array (B, T). Plain numpy is fine: this runs outside jit.

    The grader checks (5 points): shape and dtype (1); the example above (2); EOS as the first
    token keeps only it (1); a second EOS does not restart anything (1).
    """
    raise NotImplementedError


def aggregate(
    per_token: Float[Array, "B T"], mask: Bool[Array, "B T"], loss_type: str, group_size: int
) -> Float[Array, ""]:
    """Average the masked per-token terms l_it into one number, the way `loss_type` says.

    Rows are completions, G = group_size consecutive rows per prompt; |o_i| = mask[i].sum().

        "grpo"     1/B' sum_i (1/|o_i| sum_t l_it)     each completion's mean, then their mean
                                                         (DeepSeekMath eq. 3)
        "bnpo"     sum_{i,t} l_it / sum_i |o_i|          one token mean over the whole batch
        "dapo"     per group: sum_{i,t} l_it / sum_i |o_i| of its G rows; then the mean over groups
                                                         (DAPO §3.3, token-level loss)
        "dr_grpo"  sum_{i,t} l_it / (B' * T)              a constant denominator (Dr. GRPO)

    B' counts the rows with at least one True in the mask (an all-False row, a dropped completion,
    counts nowhere); in "dapo" likewise only groups with a token count. Guard every division with
    jnp.maximum(denominator, 1) so that an all-False mask gives 0, not NaN.

    Args: per_token (B, T) float; mask (B, T) bool; loss_type one of the four names (anything else:
        raise ValueError naming `loss_type`); group_size G (B is a multiple of G).
    Returns: a float scalar.

    The grader checks (12 points): grpo (2), bnpo (2), dapo (2) and dr_grpo (2) on one
    hand-worked batch; masked entries change nothing (1); empty rows
    count nowhere (1); an unknown loss_type raises ValueError (1); it works under `jax.jit` (1).
    """
    raise NotImplementedError

"""Exercise 07: multi-token prediction's targets, and the rule that makes its drafts safe.

DeepSeek-V3 (arXiv 2412.19437 §2.2) trains D extra modules; module k predicts, at every position,
the token k further on than the main model does. At inference the first module can draft the token
after next, and the main model checks the draft. You will write the two pieces around the module
that notebook 07 builds:

1. `mtp_targets`: what module k is trained to predict, and where its loss counts (eq. 24).
2. `accept_draft`: the speculative-sampling rule that keeps or replaces a draft so that every
   token still has exactly the main model's distribution: the next piece, which notebook 07 only
   uses greedily (there, a draft is kept when it is the main model's argmax).

Points: 17 in all (mtp_targets 6, accept_draft 11); a check is worth 1 point unless its line below
says 2.

Shapes: B batch, T sequence length, V vocabulary.

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_07_mtp.py` (add `-x` to stop at the first failure,
  `-k accept` to run only the checks of `accept_draft`). Every failure message says what was
  expected.
- Your code must work under `jax.jit`, so use `jnp` and `jax.random`, not `np`, on the inputs.

When both pass, compare with `minids/mtp.py` (`mtp_targets`) and `minids/generate.py`
(`accept_draft`), which the grader uses as the answer key, and see them at work in
`minids.train` (the MTP loss) and `minids.generate.generate_speculative`.
"""

from __future__ import annotations

import jax  # noqa: F401  (you will want jax.random)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
from jaxtyping import Array, Bool, Float, Int


def mtp_targets(
    targets: Int[Array, "B T"], loss_mask: Float[Array, "B T"], k: int
) -> tuple[Int[Array, "B T"], Float[Array, "B T"]]:
    """Module k's targets and loss mask, from the main model's.

    The main model reads tokens t_1 .. t_T and at position i predicts t_{i+1}: `targets[:, i]` is
    t_{i+1}, and `loss_mask[:, i]` is 1 where that prediction is graded (the answer tokens). Module
    k predicts, at position i, the token k further on: t_{i+k+1} = `targets[:, i + k]`, graded
    where `loss_mask[:, i + k]` is 1 (V3 eq. 24). The last k positions have no such token: give
    them target 0 and mask 0, so that every depth keeps the length T (one compiled shape).

    Example, k = 2: targets [10, 11, 12, 13] -> [12, 13, 0, 0]; mask [0, 1, 1, 1] -> [1, 1, 0, 0].

    Args:
        targets: the main model's targets, (B, T) integers.
        loss_mask: where the main loss counts, (B, T) floats (0 or 1).
        k: the module's depth, a Python int >= 0 (0 gives the main model's own).

    Returns:
        (targets_k, mask_k), the same shapes and dtypes as the inputs.

    The grader checks (6 points, 1 per check): shapes and dtypes; the worked example above; that
    depth 0 changes nothing; that the last k positions are masked out; a batch of two rows with
    different masks; that it works under `jax.jit` (with k static).
    """
    raise NotImplementedError


def accept_draft(
    draft: Int[Array, " B"],
    p: Float[Array, "B V"],
    q: Float[Array, "B V"],
    key: Array,
) -> tuple[Bool[Array, " B"], Int[Array, " B"]]:
    """Keep a draft token or replace it, so that the result is distributed exactly as p.

    The draft d was sampled from q (the MTP module's distribution); p is the main model's
    distribution for the same position, known once the main model has run over the draft. The
    rule (Leviathan et al., 2023; Chen et al., 2023):

        keep d with probability min(1, p(d) / q(d))                     (draw u ~ Uniform[0, 1))
        otherwise use a token drawn from  r(x) = max(0, p(x) - q(x)) / sum_y max(0, p(y) - q(y))

    Why it works: P(x) = q(x) min(1, p(x)/q(x)) + P(reject) r(x) = min(q(x), p(x)) + (p(x) -
    min(p(x), q(x))) = p(x), because P(reject) = sum_y max(0, p(y) - q(y)) is exactly r's
    normaliser. Greedy decoding is the case of one-hot p and q: keep d when it is p's argmax.

    Return both the decision and a replacement for every row (the caller picks the replacement
    where the draft is rejected). When p == q exactly, r is undefined (0 / 0) but a draft is then
    always kept; any valid token will do, e.g. one drawn from p.

    Args:
        draft: the drafted token of each row, (B,) integers, drawn from q.
        p: the main model's probabilities, (B, V), rows summing to 1.
        q: the draft's probabilities, (B, V), rows summing to 1, q(draft) > 0.
        key: a `jax.random` key; split it for the uniform draw and the replacement.

    Returns:
        (accepted, replacement): (B,) bools and (B,) integers.

    The grader checks (11 points): shapes and dtypes (1); a draft with p(d) >= q(d) is always kept
    (1); one with p(d) = 0 never is (1); the greedy case, one-hot p and q (1); the replacement is
    never a token where p <= q (1); the rate of kept drafts is sum_x min(p(x), q(x)) (2); the final
    token is distributed as p, a chi-square test over 20,000 rows (2); p == q gives a finite,
    valid replacement (1); it works under `jax.jit` (1).
    """
    raise NotImplementedError

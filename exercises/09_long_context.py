"""Exercise 09: DeepSeek Sparse Attention's lightning indexer: its score, its top-k, its loss.

DeepSeek-V3.2 (V3.2-Exp report §1-2; arXiv 2512.02556 §2.1) lets each query of MLA read only the k
earlier tokens that a small "lightning indexer" scores highest. You will write the three pieces of
the indexer that notebook 09 uses but does not build line by line, in plain JAX:

1. `index_scores`: eq. 1, I[t, s] = sum_j w[t, j] · ReLU(q[t, j] · k[s] / sqrt(d_I)), with the keys a
   query may not see (the mask is False) set to a very negative number.
2. `select_topk`: each query's k best-scored keys, and which of them it may actually read.
3. `indexer_kl`: the indexer's training loss (eqs. 3-4): KL(p || softmax(I)) over the valid keys,
   averaged over the queries that see at least one key.

Points: 20 in all (index_scores 7, select_topk 6, indexer_kl 7); a check is worth 1 point
unless its line below says 2.

Shapes: B batch, T queries, S keys (cache slots), N the indexer's heads (H_I), H their width
(d_I), K the number of chosen keys.

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_09_long_context.py` (`-x` stops at the first failure,
  `-k topk` runs only the top-k checks). Every failure message says what was expected.
- Your code must work under `jax.jit` and `jax.grad`: use `jnp` and `jax.lax`, not `np`.

When all pass, compare with `minids/dsa.py` (`index_scores`, `select_topk`, `indexer_kl`), the answer
key the grader uses with MINIDS_EXERCISES=solutions, and see them at work in `minids.dsa.SparseMLA`.
"""

from __future__ import annotations

import jax  # noqa: F401  (you will want jax.nn.relu, jax.lax.top_k, jax.nn.log_softmax)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
from jaxtyping import Array, Bool, Float, Int

MASKED = -1e30  # what a key the query may not see scores (finite, so no NaN appears)


def index_scores(
    q: Float[Array, "B T N H"],
    weights: Float[Array, "B T N"],
    k: Float[Array, "B S H"],
    mask: Bool[Array, "#B T S"],
) -> Float[Array, "B T S"]:
    """The lightning indexer's score of every key s for every query t (eq. 1).

        dots[b, t, j, s] = q[b, t, j] · k[b, s] / sqrt(H)      one number per indexer head j
        I[b, t, s]       = sum_j weights[b, t, j] * ReLU(dots[b, t, j, s])

    The ReLU comes before the weighting: a head whose dot product is negative adds nothing, whatever
    its weight. Where `mask` is False (a later token, or padding) the score is MASKED instead.
    `mask` may have a batch axis of 1 (one mask for every sequence). Return float32.
    """
    raise NotImplementedError("write index_scores (eq. 1): einsum, ReLU, weighted sum, mask")


def select_topk(
    scores: Float[Array, "B T S"], mask: Bool[Array, "#B T S"], k: int
) -> tuple[Int[Array, "B T K"], Bool[Array, "B T K"]]:
    """(indices of each query's K best-scored keys, whether each chosen key is visible).

    K = min(k, S). `scores` are already MASKED where `mask` is False, so visible keys always rank
    first; a query that sees fewer than K keys still gets K indices, and `valid` is False for the
    invisible ones among them. Hint: jax.lax.top_k, then read `mask` at the chosen indices.
    """
    raise NotImplementedError("write select_topk: the K best scores' indices and their visibility")


def indexer_kl(
    target: Float[Array, "B T S"], scores: Float[Array, "B T S"], valid: Bool[Array, "#B T S"]
) -> Float[Array, ""]:
    """The mean over queries of KL(p[t, :] || softmax(I[t, :])), over the valid keys only (eqs. 3-4).

    `target` p is the main attention's distribution (head-summed, L1-normalised): it sums to 1 over
    each query's valid keys. The softmax of the scores runs over the valid keys only (set the others
    to MASKED first). KL(p || q) = sum_s p_s (log p_s - log q_s), where a p_s of 0 adds 0. A query
    with no valid key (padding) is left out of the mean; the mean is over the others.
    """
    raise NotImplementedError(
        "write indexer_kl: masked log-softmax, KL per query, mean over queries"
    )

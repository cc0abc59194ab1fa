"""Exercise 01: the DeepSeek-V3 router and its auxiliary-loss-free load balancing.

A mixture-of-experts layer has E small feed-forward networks, the experts, and sends each token to
only K of them. The router decides which, and how much each chosen expert's output counts. You will
write the three pieces of DeepSeek-V3's router (arXiv 2412.19437, §2.1.2), in plain JAX:

1. `sigmoid_topk_router`: choose K experts per token and give each a gate value.
2. `expert_load`: measure what fraction of the work each expert got.
3. `aux_free_bias_update`: nudge a per-expert bias so that the load evens out over training.

Shapes use one set of letters: T tokens, E experts, K experts per token.

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_01_moe_router.py` (add `-x` to stop at the first
  failure, `-k bias` to run only the bias checks). Every failure message says what was expected.
- No Python loops over tokens or experts are needed: `jax.lax.top_k`, `jnp.take_along_axis`,
  `jax.nn.one_hot` and broadcasting do it all.
- Your code must work under `jax.jit` and `jax.grad`, so use `jnp`, not `np`, on the inputs.

When all checks pass, compare with `minids/moe.py` (`sigmoid_topk_router`, `select_experts`,
`expert_load`, `aux_free_bias_update`), which the grader uses as the answer key.
"""

from __future__ import annotations

import jax  # noqa: F401  (you will want jax.nn.sigmoid, jax.lax.top_k, jax.nn.one_hot)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
from jaxtyping import Array, Float, Int


def sigmoid_topk_router(
    logits: Float[Array, "T E"], bias: Float[Array, " E"], k: int, route_scale: float = 1.0
) -> tuple[Int[Array, "T K"], Float[Array, "T K"]]:
    """Choose k experts per token on biased sigmoid scores; gate them with the unbiased scores.

    The idea. Each expert i has a centroid vector e_i; a token u scores it with an affinity

        s_i = sigmoid(u . e_i) = sigmoid(logits[t, i])          (V3 eq. 15, a number in (0, 1))

    The token goes to the k experts with the largest s_i + b_i, where b is a per-expert bias that
    the load balancer adjusts (eq. 16). The bias only decides *who* is chosen. How much a chosen
    expert counts, its gate value, uses the unbiased scores, normalised over the k chosen:

        gate_i = route_scale * s_i / (sum of s_j over the k chosen experts j)      (eq. 13)

    so each token's gates are non-negative and add up to route_scale. Why keep b out of the gate?
    The bias exists to spread tokens over experts; if it also scaled their outputs, balancing would
    change what the model computes, which is what an auxiliary loss does and V3 avoids.

    Args:
        logits: router logits u . e_i, shape (T, E), float32.
        bias: the load-balancing bias b, shape (E,).
        k: experts per token (1 <= k <= E), a Python int.
        route_scale: a constant that multiplies every gate (DeepSeek-V3 uses 2.5).

    Returns:
        indices: (T, K) integer array, the chosen experts of each token, best (largest s + b) first.
        gates: (T, K) float32 array, gates[t, j] is the gate value of expert indices[t, j].

    Hints:
        - `jax.lax.top_k(x, k)` returns (values, indices) of the k largest entries of each row.
        - `jnp.take_along_axis(s, indices, axis=-1)` picks s[t, indices[t, j]] for every t and j.
        - The bias has shape (E,) and the scores (T, E): write `bias[None, :]` to add it to every row.

    The grader checks: shapes and dtypes; k different experts per token; the highest scores win
    when the bias is zero; gates equal route_scale * s / sum(s) over the chosen, hand-computed;
    gates sum to route_scale; a bias changes which experts are chosen but the gates still come from
    the unbiased scores; a bias equal for all experts changes nothing; it works under `jax.jit`, and
    `jax.grad` of the gates reaches only the logits of the chosen experts.
    """
    raise NotImplementedError


def expert_load(indices: Int[Array, "T K"], n_experts: int) -> Float[Array, " E"]:
    """The fraction of all T * K routed (token, expert) assignments that went to each expert.

    With T = 3 tokens, k = 2 and E = 4 experts, indices [[0, 1], [0, 2], [0, 1]] make 6 assignments:
    expert 0 got 3, expert 1 got 2, expert 2 got 1, expert 3 none, so the load is
    [3/6, 2/6, 1/6, 0]. A perfectly balanced router gives 1/E to every expert.

    Args:
        indices: the chosen experts, shape (T, K), as returned by `sigmoid_topk_router`.
        n_experts: E, a Python int (an expert nobody chose must still get its 0).

    Returns:
        The load, shape (E,), float32, summing to 1.

    Hint: `jax.nn.one_hot(indices, n_experts)` is (T, K, E); sum it over the first two axes.

    The grader checks: the example above; the load sums to 1; shape (E,) even when some experts
    are never chosen.
    """
    raise NotImplementedError


def aux_free_bias_update(
    bias: Float[Array, " E"], load: Float[Array, " E"], speed: float = 1e-3
) -> Float[Array, " E"]:
    """One step of DeepSeek-V3's auxiliary-loss-free balancing: move each bias by +-speed.

    After each training step, compare every expert's load with the mean load 1/E:

        overloaded  (load_i > mean):  b_i <- b_i - speed     chosen a little less often next time
        underloaded (load_i < mean):  b_i <- b_i + speed     chosen a little more often
        exactly at the mean:          b_i unchanged

    V3 calls the speed gamma and uses 0.001. Only the sign of the difference matters, not its size,
    so a badly overloaded expert moves no faster than a slightly overloaded one. The update is not
    learned: no gradient flows through it (it happens outside the loss).

    Args:
        bias: the current bias b, shape (E,), float32.
        load: each expert's load this step, shape (E,) (fractions, as `expert_load` returns, or
            counts: the rule only compares each load with the mean).
        speed: the step gamma.

    Returns:
        The new bias, same shape and dtype as `bias`.

    Hint: `jnp.sign(x)` is -1, 0 or +1.

    The grader checks: a hand-worked example with one expert over, one under and two at the mean;
    that `speed` is used; shape and dtype; and that calling router -> load -> update repeatedly on a
    router that prefers a few experts brings the load close to balance.
    """
    raise NotImplementedError

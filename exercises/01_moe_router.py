"""Exercise 01: the DeepSeek-V3 router and its auxiliary-loss-free load balancing.

A mixture-of-experts layer has E small feed-forward networks, the experts, and sends each token to
only K of them. The router decides which, and how much each chosen expert's output counts. You will
write the pieces of DeepSeek-V3's router (arXiv 2412.19437, §2.1.2), in plain JAX:

1. `sigmoid_topk_router`: choose K experts per token and give each a gate value.
2. `expert_load`: measure what fraction of the work each expert got.
3. `aux_free_bias_update`: nudge a per-expert bias so that the load evens out over training.
   (Notebook 01 writes 1 in numpy; 2 and 3 are short.) Then the next pieces, which it does not:
4. `select_experts`: the router with group-limited routing (V3's node-limited routing, V2's
   device-limited routing), for V3 (sigmoid, bias) and V2 (softmax, no bias) configurations.
5. `sequence_aux_loss`: V3's complementary sequence-wise balance loss (eqs. 17-20).

Shapes use one set of letters: B sequences, T tokens, E experts, K experts per token.

Points: 40 in all (sigmoid_topk_router 9, expert_load 2, aux_free_bias_update 4, select_experts
16, sequence_aux_loss 9); a check is worth 1 point unless its line below says 2.

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

from minids.config import MoEConfig


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

    The grader checks (9 points, 1 per check): shapes and dtypes; k different experts per token; the highest scores win
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

    The grader checks (2 points, 1 per check): the example above; the load sums to 1; shape (E,) even when some experts
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

    The grader checks (4 points, 1 per check): a hand-worked example with one expert over, one under and two at the mean;
    that `speed` is used; shape and dtype; and that calling router -> load -> update repeatedly on a
    router that prefers a few experts brings the load close to balance.
    """
    raise NotImplementedError


def select_experts(
    scores: Float[Array, "T E"], bias: Float[Array, " E"], cfg: MoEConfig
) -> tuple[Int[Array, "T K"], Float[Array, "T K"]]:
    """Group-limited routing: each token picks its K experts inside its best few groups of experts.

    Why. With expert parallelism the E experts live on different devices (V3: nodes), E / n_groups
    per group, and a token sent to experts in many groups costs communication to each. V3 limits
    every token to `cfg.groups_per_token` groups (M = 4 of 8 nodes, §2.1.2); V2 did the same
    per device (§2.1.3). Within the allowed groups the router picks the top K as before.

    The steps, for each token (row of `scores`, the affinities s: sigmoid or softmax of the logits):

    1. biased = s + bias if `cfg.uses_bias` (aux-free balancing), else s.
    2. If `cfg.n_groups > 1`: split the E experts into n_groups consecutive groups of E / n_groups
       (group g holds experts g*E/G ... (g+1)*E/G - 1) and score each group:
         - V3 (`cfg.uses_bias`): the sum of the group's 2 highest biased scores;
         - V2 (no bias): the group's highest score.
       Keep the `cfg.groups_per_token` best groups; every expert outside them is out of the race
       (set its biased score to -inf).
    3. The K = `cfg.experts_per_token` experts with the highest biased scores are chosen.
    4. The gates use the unbiased s of the chosen experts; if `cfg.renormalizes` (sigmoid gates),
       divide them by their sum over the K; finally multiply by `cfg.route_scale`.

    Args:
        scores: (T, E) affinities, float32.
        bias: (E,) the aux-free bias (zeros when balancing does not use one).
        cfg: a `minids.config.MoEConfig`; read n_routed_experts, experts_per_token, n_groups,
            groups_per_token, route_scale and the two properties uses_bias and renormalizes.

    Returns:
        (indices, gates): int32 (T, K) expert ids and float32 (T, K) gate values.

    Hints: `scores.reshape(T, n_groups, E // n_groups)`; `jax.lax.top_k` works on the last axis;
    `jax.nn.one_hot(best_groups, n_groups).any(axis=1)` marks the chosen groups; `jnp.repeat(...,
    E // n_groups, axis=1)` stretches a (T, G) group mask to (T, E).

    The grader checks (16 points): shapes and dtypes (1); with one group it is the plain router
    (1); a group's score is the sum of its top 2, not its best expert (2); V2's group score is
    its max and its softmax gates are not renormalised (2); every token's experts lie in at most
    groups_per_token groups (2); the bias decides the groups but not the gates (2); route_scale
    (1); agreement with a numpy version in the grader (2); it works under `jax.jit` (2);
    an expert outside the chosen groups is never picked, however high its score (1).
    """
    raise NotImplementedError


def sequence_aux_loss(
    scores: Float[Array, "B T E"], indices: Int[Array, "B T K"], alpha: float
) -> Float[Array, ""]:
    """V3's complementary sequence-wise balance loss (eqs. 17-20), averaged over the B sequences.

    Aux-free balancing evens the load over many batches; this small loss (alpha = 1e-4 in V3)
    also stops a single sequence from sending all its tokens to a few experts. For one sequence
    of T tokens, with s the (T, E) affinities and the chosen experts `indices` (T, K):

        f_i = E / (K T) * (number of the sequence's tokens that chose expert i)      (eq. 18)
        s'_{t,i} = s_{t,i} / sum_j s_{t,j}            (each token's affinities normalised, eq. 19)
        P_i = 1/T sum_t s'_{t,i}                                                       (eq. 20)
        L_seq = alpha * sum_i f_i P_i                                                  (eq. 17)

    and the result is the mean of L_seq over the B sequences. At perfect balance every f_i = 1
    and sum_i P_i = 1, so L = alpha; the more a sequence concentrates on experts it also scores
    highly, the larger L.

    Args:
        scores: (B, T, E) affinities (sigmoid in V3, so a token's scores do not sum to 1).
        indices: (B, T, K) the experts each token chose.
        alpha: the loss weight.

    Returns:
        A scalar. Its gradient flows into `scores` (through P); f is a count and has none.

    The grader checks (9 points): a scalar (1); a hand-worked sequence (2); the scores are
    normalised per token (1); f and P are per sequence, not pooled over the batch (2); perfect
    balance gives alpha (1); the gradient reaches the scores and is finite (1); it works under
    `jax.jit` (1).
    """
    raise NotImplementedError

"""DeepSeekMoE: shared experts, many small routed experts, and keeping them all busy.

How it works. A mixture-of-experts (MoE) layer replaces a block's one feed-forward network (FFN)
with many small FFNs, the experts, and runs each token through only a few of them. DeepSeekMoE
(Dai et al. 2024, arXiv 2401.06066) makes two choices. The routed experts are fine-grained: many
narrow FFNs, so that a token combines more specialists for the same compute. And a few shared
experts see every token, so that common knowledge is learned once rather than in every expert.
DeepSeek-V3 (arXiv 2412.19437, §2.1.2, eqs. 12-16) writes the layer for a token u_t as

    h'_t = u_t + sum_i FFN_shared_i(u_t) + sum_i g_it FFN_routed_i(u_t)                     (12)
    s_it = sigmoid(u_t . e_i)            affinity of token t for expert i (e_i: its centroid) (15)
    chosen: the K experts with the largest s_it + b_i    (b_i: load-balancing bias, eq. 16)
    g_it = s_it / sum_{j chosen} s_jt    for a chosen expert, 0 otherwise              (13, 14)

The block adds u_t; this module returns the two sums, with g scaled by `route_scale` as V3's
released code does. DeepSeek-V2 (arXiv 2405.04434, §2.2) used softmax affinities and kept the top-K
of them as they are, without renormalising; `MoEConfig.gate` picks either router.

Group-limited routing. The experts are split into `n_groups` equal groups (in V3, the GPUs of a
node). A token ranks the groups by the sum of the two highest biased scores in each, keeps the best
`groups_per_token`, and chooses its K experts inside those only, which bounds how many devices its
activations travel to.

Balance. Left alone, a router sends most tokens to a few experts that then improve fastest: a
collapse. `MoEConfig.balancing` picks a remedy:

- `aux_loss`, V2's expert-level loss: alpha * sum_i f_i P_i, with f_i = E/(K T) * (tokens sent to
  expert i) and P_i the mean affinity for i. At perfect balance with a uniform router it equals
  alpha; its gradient lowers the affinity of experts that are both busy and preferred.
- `seq_aux_loss`, V3 eqs. 17-20: the same loss per sequence, affinities normalised over all experts.
- `aux_free`, V3's auxiliary-loss-free balancing: no loss. The bias b_i above is used to choose
  experts and never in g. After each training step b_i -= gamma if expert i received more than its
  share of that step's tokens and += gamma if less, outside the gradient. It steers traffic without
  distorting what the chosen experts contribute. V3 combines it with a tiny `seq_aux_loss`.

The bias is state, not a parameter (`AuxFreeBias`): checkpoints save it, the optimizer never sees it.

Capacity (optional). With a capacity factor c each expert takes at most ceil(c T K / E) of the
batch's T tokens, earlier tokens first, and drops the rest of its assignments: they contribute
nothing, and the token keeps its shared experts and its residual. V3 drops no tokens; V2 dropped at
c = 1.0 in training, the lowest-affinity assignments of each device first. minids drops the latest
tokens first, as GShard and Switch do, which a hand-worked example can follow.

Dispatch. `dispatch_reference` runs every expert on every token and keeps the chosen results (E/K
times the work, plainly correct). `dispatch_fast` queues the T*K (token, expert) pairs by expert and
runs each expert on its own queue only: a grouped matmul in fixed-size blocks, a fair share of slots
per expert and a few overflow blocks for the busier ones (MegaBlocks, Gale et al. 2022, also drops
nothing by computing in blocks, there with block-sparse GPU kernels), then unsorts and combines. Both drop the same assignments
and give the same outputs and gradients (tests/test_moe.py).
With `cfg.fp8` set, both run the routed experts' GEMMs on simulated FP8 values (V3 §3.3;
`_fp8_expert_inputs` says what is and is not simulated); the router stays float32.

Shapes (letters of minids/model.py): T counts all tokens of the batch (B*T flattened), D model width,
E routed experts, K experts per token, F expert width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.config import ModelConfig
from minids.fp8 import FP8Config, fp8_expert_activation, fp8_expert_output, fp8_expert_weights
from minids.layers import SwiGLU

GATES = ("softmax", "sigmoid")
BALANCING = ("none", "aux_loss", "seq_aux_loss", "aux_free", "aux_free+seq_aux_loss")
DISPATCH = ("fast", "reference")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, *, positive: bool) -> None:
    rule = "a finite number > 0" if positive else "a finite number >= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class MoEConfig:
    """One MoE FFN: routed and shared experts, the router, balancing, capacity and dispatch."""

    n_routed_experts: int = 8  # E
    n_shared_experts: int = 1  # always on; run as one SwiGLU of width n_shared * expert_ffn_dim
    experts_per_token: int = 2  # K
    expert_ffn_dim: int = 128  # F, the hidden width of each expert
    gate: str = "sigmoid"  # "sigmoid" (V3, renormalised over the K chosen) or "softmax" (V2)
    route_scale: float = 1.0  # gate values are multiplied by this (V3 2.5, V2 16.0)
    n_groups: int = 1  # expert groups for group-limited routing (1 = no limit)
    groups_per_token: int = 1  # groups a token may choose its experts from
    balancing: str = "aux_free"  # one of BALANCING
    aux_loss_alpha: float = 1e-4  # alpha of the balance loss (V3 seq-wise 1e-4; V2 expert 3e-3)
    bias_update_speed: float = 1e-3  # gamma of the aux-free bias update (V3 0.001)
    capacity_factor: float | None = None  # None: no token is dropped
    n_dense_layers: int = 1  # leading blocks that keep a dense FFN (V3 3, V2 1)
    dispatch: str = "fast"  # "fast" (each expert on its own tokens) or "reference" (every expert, every token)

    def __post_init__(self) -> None:
        for name in ("n_routed_experts", "experts_per_token", "expert_ffn_dim", "n_groups",
                     "groups_per_token"):
            _check_int(name, getattr(self, name), 1)
        _check_int("n_shared_experts", self.n_shared_experts, 0)
        _check_int("n_dense_layers", self.n_dense_layers, 0)
        for name, allowed in (("gate", GATES), ("balancing", BALANCING), ("dispatch", DISPATCH)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        _check_number("route_scale", self.route_scale, positive=True)
        _check_number("aux_loss_alpha", self.aux_loss_alpha, positive=False)
        _check_number("bias_update_speed", self.bias_update_speed, positive=False)
        if self.capacity_factor is not None:
            _check_number("capacity_factor", self.capacity_factor, positive=True)
        E, K, G = self.n_routed_experts, self.experts_per_token, self.n_groups
        if K > E:
            raise ValueError(f"experts_per_token ({K}) must be <= n_routed_experts ({E}): a token "
                             "chooses K different experts")
        if E % G != 0:
            raise ValueError(f"n_groups ({G}) must divide n_routed_experts ({E}) into equal groups")
        if self.groups_per_token > G:
            raise ValueError(f"groups_per_token ({self.groups_per_token}) must be <= n_groups ({G})")
        if K > self.groups_per_token * (E // G):
            raise ValueError(
                f"experts_per_token ({K}) must be <= groups_per_token * experts per group "
                f"({self.groups_per_token} * {E // G}): a token chooses its experts in its groups"
            )

    @property
    def uses_bias(self) -> bool:
        """Whether selection adds the aux-free bias (and `MoE.update_bias` changes it)."""
        return self.balancing.startswith("aux_free")


def expert_capacity(n_tokens: int, cfg: MoEConfig) -> int | None:
    """Most assignments an expert keeps from a batch of n_tokens: ceil(c T K / E); None = no limit."""
    if cfg.capacity_factor is None:
        return None
    return math.ceil(cfg.capacity_factor * n_tokens * cfg.experts_per_token / cfg.n_routed_experts)


# ------------------------------------------------------------------------------------- router


def router_scores(logits: Float[Array, "T E"], gate: str) -> Float[Array, "T E"]:
    """Affinities s from the router logits u . e_i, in float32: sigmoid (V3) or softmax (V2)."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {list(GATES)}, got {gate!r}")
    logits = logits.astype(jnp.float32)
    return jax.nn.sigmoid(logits) if gate == "sigmoid" else jax.nn.softmax(logits, axis=-1)


def select_experts(
    scores: Float[Array, "T E"], bias: Float[Array, " E"], cfg: MoEConfig
) -> tuple[Int[Array, "T K"], Float[Array, "T K"]]:
    """Each token's K experts, chosen on s + b within its best groups, and their gates from s alone."""
    T, E = scores.shape
    if E != cfg.n_routed_experts or bias.shape != (E,):
        raise ValueError(f"scores (T, E) and bias (E,) need E = n_routed_experts = "
                         f"{cfg.n_routed_experts}, got {scores.shape} and {bias.shape}")
    biased = scores + bias[None, :]  # eq. 16: the bias only decides who is chosen
    if cfg.n_groups > 1:
        per_group = E // cfg.n_groups
        grouped = biased.reshape(T, cfg.n_groups, per_group)
        group_score = jnp.sum(jax.lax.top_k(grouped, min(2, per_group))[0], axis=-1)  # (T, G)
        _, best = jax.lax.top_k(group_score, cfg.groups_per_token)
        allowed = jnp.any(jax.nn.one_hot(best, cfg.n_groups, dtype=bool), axis=1)  # (T, G)
        allowed = jnp.repeat(allowed, per_group, axis=1)  # (T, E)
        biased = jnp.where(allowed, biased, -jnp.inf)
    _, indices = jax.lax.top_k(biased, cfg.experts_per_token)
    chosen = jnp.take_along_axis(scores, indices, axis=-1)  # the unbiased s of the chosen experts
    if cfg.gate == "sigmoid":  # eq. 13: normalise over the chosen K
        chosen = chosen / jnp.sum(chosen, axis=-1, keepdims=True)
    return indices, chosen * cfg.route_scale


def sigmoid_topk_router(
    logits: Float[Array, "T E"], bias: Float[Array, " E"], k: int, route_scale: float = 1.0
) -> tuple[Int[Array, "T K"], Float[Array, "T K"]]:
    """V3's router without groups (exercise 01): top-k of sigmoid(logits) + bias, gates s / sum s."""
    cfg = MoEConfig(n_routed_experts=logits.shape[-1], experts_per_token=k, gate="sigmoid",
                    route_scale=route_scale)
    return select_experts(router_scores(logits, "sigmoid"), bias, cfg)


# ---------------------------------------------------------------------------------- balancing


def expert_load(indices: Int[Array, "T K"], n_experts: int) -> Float[Array, " E"]:
    """Fraction of the T*K routed assignments that went to each expert (sums to 1)."""
    counts = jnp.sum(jax.nn.one_hot(indices, n_experts, dtype=jnp.float32), axis=(0, 1))
    return counts / indices.size


def _balance_loss(scores: Float[Array, "T E"], indices: Int[Array, "T K"]) -> Float[Array, ""]:
    E = scores.shape[-1]
    f = E * expert_load(indices, E)  # E/(K T) * count: 1 for every expert at perfect balance
    P = jnp.mean(scores / jnp.sum(scores, axis=-1, keepdims=True), axis=0)  # eq. 19-20
    return jnp.sum(f * P)


def expert_aux_loss(
    scores: Float[Array, "T E"], indices: Int[Array, "T K"], alpha: float
) -> Float[Array, ""]:
    """V2's expert-level balance loss over the whole batch: alpha * sum_i f_i P_i."""
    return alpha * _balance_loss(scores, indices)


def sequence_aux_loss(
    scores: Float[Array, "B T E"], indices: Int[Array, "B T K"], alpha: float
) -> Float[Array, ""]:
    """V3's sequence-wise balance loss (eqs. 17-20): alpha * sum_i f_i P_i per sequence, averaged."""
    return alpha * jnp.mean(jax.vmap(_balance_loss)(scores, indices))


def aux_free_bias_update(
    bias: Float[Array, " E"], load: Float[Array, " E"], speed: float = 1e-3
) -> Float[Array, " E"]:
    """V3's bias rule: b_i - gamma where expert i is above the mean load, + gamma where below."""
    step = speed * jnp.sign(jnp.mean(load) - load)  # 0 for an expert exactly at the mean
    return jax.lax.stop_gradient(bias + step.astype(bias.dtype))


class AuxFreeBias(nnx.Variable):
    """The aux-free balancing bias b: model state that checkpoints keep, but not an `nnx.Param`."""


# ----------------------------------------------------------------------------------- dispatch


def _queue_places(expert: Int[Array, " P"], n_experts: int) -> Int[Array, " P"]:
    """Each (token, expert) pair's place in its expert's queue: how many earlier pairs (in token
    order) chose the same expert. A running count per expert, no sort."""
    choice = jax.nn.one_hot(expert, n_experts, dtype=jnp.int32)  # (P, E)
    return jnp.sum((jnp.cumsum(choice, axis=0) - 1) * choice, axis=1)


def _check_dispatch_shapes(x, indices, gates, w_gate, w_up, w_down) -> None:
    (T, D), (E, _, F) = x.shape, w_gate.shape
    if indices.shape != gates.shape or indices.shape[0] != T or w_up.shape != (E, D, F) \
            or w_gate.shape != (E, D, F) or w_down.shape != (E, F, D):
        raise ValueError(
            "dispatch needs x (T, D), indices and gates (T, K), w_gate and w_up (E, D, F), w_down "
            f"(E, F, D); got {x.shape}, {indices.shape}, {gates.shape}, {w_gate.shape}, "
            f"{w_up.shape}, {w_down.shape}"
        )


def dispatch_reference(
    x: Float[Array, "T D"], indices: Int[Array, "T K"], gates: Float[Array, "T K"],
    w_gate: Float[Array, "E D F"], w_up: Float[Array, "E D F"], w_down: Float[Array, "E F D"],
    capacity: int | None = None, fp8: FP8Config | None = None,
) -> tuple[Float[Array, "T D"], Bool[Array, "T K"]]:
    """Every expert on every token, then a gate-weighted sum of the chosen: (y, kept assignments)."""
    _check_dispatch_shapes(x, indices, gates, w_gate, w_up, w_down)
    T, K = indices.shape
    E = w_gate.shape[0]
    fp8_in, fp8_out = _fp8_hooks(fp8)
    x, w_gate, w_up, w_down = _fp8_expert_inputs(x, w_gate, w_up, w_down, fp8)
    gate = fp8_out(jnp.einsum("TD,EDF->ETF", x, w_gate))
    hidden = fp8_in(jax.nn.silu(gate) * fp8_out(jnp.einsum("TD,EDF->ETF", x, w_up)))
    out = fp8_out(jnp.einsum("ETF,EFD->ETD", hidden, w_down))  # expert e's output for every token
    choice = jax.nn.one_hot(indices, E, dtype=jnp.int32)  # (T, K, E)
    kept = jnp.ones((T, K), dtype=bool)
    if capacity is not None:  # queue position: earlier (token, slot) pairs that chose the same expert
        position = _queue_places(indices.reshape(T * K), E).reshape(T, K)
        kept = position < capacity
    combine = jnp.einsum("TKE,TK->TE", choice.astype(jnp.float32), jnp.where(kept, gates, 0.0))
    y = jnp.einsum("TE,ETD->TD", combine, out.astype(jnp.float32))
    return y.astype(x.dtype), kept


def _ceil_div(n, d):
    return -(-n // d)


def _round_up(n: int, multiple: int) -> int:
    return _ceil_div(n, multiple) * multiple


def _block_sizes(pairs: int, n_experts: int) -> tuple[int, int, int]:
    """(slots per expert C, rows per overflow block b, overflow blocks R) of `dispatch_fast`.

    C is a fair share of the T*K pairs, rounded up to 8 rows: at perfect balance every pair has a
    slot. An overflow block holds b = C/16 rows (at least 8) of one expert; R = E of them take up
    to 1/16 more pairs, enough for a router even roughly balanced (an untrained one, MaxVio ~0.15,
    needs 13 at the `small` width of benchmarks/bench_moe.py).
    """
    C = _round_up(_ceil_div(pairs, n_experts), 8)
    return C, _round_up(max(C // 16, 8), 8), n_experts


@jax.custom_vjp
def _gather_sum(src: Float[Array, "R D"], index: Int[Array, "N m"], back: Int[Array, "R n"]):
    """out[i] = sum_j src[index[i, j]], where an index of R (one past the end) reads zeros.

    `back` is the same map read the other way: row r of `src` feeds the outputs back[r, :] (N:
    none). The gradient is then one more `_gather_sum`, not a scatter-add, which XLA:CPU runs much
    more slowly.
    """
    padded = jnp.concatenate([src, jnp.zeros((1,) + src.shape[1:], src.dtype)])
    return padded[index[:, 0]] if index.shape[1] == 1 else jnp.sum(padded[index], axis=1)


_gather_sum.defvjp(lambda src, index, back: (_gather_sum(src, index, back), (index, back)),
                   lambda res, g: (_gather_sum(g, res[1], res[0]), None, None))


def _expert_ffn(rows: Float[Array, "N C D"], w_gate_up: Float[Array, "N D 2F"],
                w_down: Float[Array, "N F D"], fp8: FP8Config | None, scale=None) -> Float[Array, "N C D"]:
    """SwiGLU of block n's rows with block n's weights, three batched matmuls (gate and up as one)."""
    fp8_in, fp8_out = _fp8_hooks(fp8)
    F = w_down.shape[1]
    gate_up = jnp.einsum("NCD,NDF->NCF", rows, w_gate_up)
    hidden = fp8_in(jax.nn.silu(fp8_out(gate_up[..., :F])) * fp8_out(gate_up[..., F:]))
    if scale is not None:
        hidden = hidden * scale.astype(hidden.dtype)
    return fp8_out(jnp.einsum("NCF,NFD->NCD", hidden, w_down))


def _expert_blocks(
    n: int, size: int, fp8: FP8Config | None, pair_row: Int[Array, " P"], gate: Float[Array, " P1"],
    w_gate_up: Float[Array, "N D 2F"], w_down: Float[Array, "N F D"], x: Float[Array, "T D"],
) -> Float[Array, "T D"]:
    """Fill n blocks of `size` rows from the T*K pairs (pair p to row pair_row[p]; n * size for
    none), apply block i's weights to block i's rows, and return each token's sum of its pairs'
    outputs weighted by gate[p] (gate[P] = 0)."""
    rows, (T, D), P = n * size, x.shape, pair_row.shape[0]
    K = P // T
    row_pair = jnp.full((rows + 1,), P, jnp.int32).at[pair_row].set(jnp.arange(P, dtype=jnp.int32))[:rows]
    row_token = jnp.where(row_pair < P, row_pair // K, T)
    tokens_rows, rows_tokens = row_token[:, None], pair_row.reshape(T, K)
    block = _gather_sum(x, tokens_rows, rows_tokens).reshape(n, size, D)
    row_gate = gate[row_pair]
    if fp8 is None:  # the gate scales the hidden activation: one multiply fused into SwiGLU's
        out = _expert_ffn(block, w_gate_up, w_down, fp8, row_gate.reshape(n, size, 1)).reshape(rows, D)
    else:  # FP8: the down GEMM must read the quantized activation itself
        out = _expert_ffn(block, w_gate_up, w_down, fp8).reshape(rows, D)
        out = out.astype(jnp.float32) * row_gate.astype(jnp.float32)[:, None]
    return _gather_sum(out.astype(jnp.float32), rows_tokens, tokens_rows)


def _overflow_blocks(
    n: int, size: int, fp8: FP8Config | None, ints: tuple[Array, Array, Array], gate: Float[Array, " P1"],
    w_gate_up: Float[Array, "E D 2F"], w_down: Float[Array, "E F D"], x: Float[Array, "T D"],
) -> Float[Array, "T D"]:
    """`_expert_blocks` over n overflow blocks of `size` rows. Expert e's pairs past its slots
    (past[p] >= 0: the place after the slots; -1 for other pairs) fill ceil(excess_e / size)
    consecutive blocks, which get a copy of e's weights (blocks nobody needs: zeros)."""
    expert, past, excess = ints
    E = w_gate_up.shape[0]
    per_expert = _ceil_div(excess, size)
    first = jnp.cumsum(per_expert) - per_expert
    row = jnp.where(past >= 0, first[expert] * size + past, n * size)
    # Block i's expert; a block nobody needs has only zero rows, so any expert's weights will do.
    owner = jnp.minimum(jnp.searchsorted(jnp.cumsum(per_expert), jnp.arange(n), side="right"), E - 1)
    return _expert_blocks(n, size, fp8, jnp.minimum(row, n * size), gate, w_gate_up[owner], w_down[owner], x)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _lean_cond(true_fn, false_fn, pred, ints, *floats):
    """`lax.cond(pred, true_fn, false_fn, ints, *floats)`, differentiable in `floats` only.

    Differentiating `lax.cond` itself makes the branch that runs also return zero-filled copies of
    the other branch's saved activations; for the overflow's fallback branch, blocks for every
    pair, that is more memory traffic than the overflow's own work. Here the backward pass keeps
    only the inputs and runs the chosen branch's forward again, inside its gradient.
    """
    return jax.lax.cond(pred, true_fn, false_fn, ints, *floats)


def _lean_cond_fwd(true_fn, false_fn, pred, ints, *floats):
    return _lean_cond(true_fn, false_fn, pred, ints, *floats), (pred, ints, floats)


def _lean_cond_bwd(true_fn, false_fn, residuals, g):
    pred, ints, floats = residuals

    def grad_of(fn):
        return lambda ints, floats, g: jax.vjp(lambda *f: fn(ints, *f), *floats)[1](g)

    grads = jax.lax.cond(pred, grad_of(true_fn), grad_of(false_fn), ints, floats, g)
    return (None, None, *grads)


_lean_cond.defvjp(_lean_cond_fwd, _lean_cond_bwd)


def dispatch_fast(
    x: Float[Array, "T D"], indices: Int[Array, "T K"], gates: Float[Array, "T K"],
    w_gate: Float[Array, "E D F"], w_up: Float[Array, "E D F"], w_down: Float[Array, "E F D"],
    capacity: int | None = None, fp8: FP8Config | None = None,
    *, blocks: tuple[int, int, int] | None = None,
) -> tuple[Float[Array, "T D"], Bool[Array, "T K"]]:
    """Each expert on its own tokens only, as a grouped matmul in fixed-size blocks of rows.

    1. The T*K (token, expert) pairs queue per expert, earlier tokens first (the order capacity
       dropping also uses): `rank` is a pair's place in its expert's queue.
    2. The first C pairs of every queue fill block e of an (E, C, D) array of slots, C a fair
       share (`_block_sizes`). Its matmuls are batched over the experts: one (C, D) @ (D, 2F) and
       one (C, F) @ (F, D) per expert, the matmul every backend runs fastest.
    3. The pairs past C, in the queues of the busier experts, fill overflow blocks of b rows, each
       block one expert's, whose weights are copied in. R blocks are kept ready; a router so
       unbalanced that it needs more runs a branch with blocks for every pair (`_lean_cond`).
    4. Each token sums its experts' outputs, weighted by their gates. Slots and block rows that no
       pair fills hold zeros: their work is the price of fixed shapes.

    Rows move between tokens and blocks by gathers (`_gather_sum`), forward and backward.
    `blocks` overrides (C, b, R), for tests.
    """
    _check_dispatch_shapes(x, indices, gates, w_gate, w_up, w_down)
    (T, K), E = indices.shape, w_gate.shape[0]
    P = T * K
    C, b, R = _block_sizes(P, E) if blocks is None else blocks
    x, w_gate, w_up, w_down = _fp8_expert_inputs(x, w_gate, w_up, w_down, fp8)
    w_gate_up = jnp.concatenate([w_gate, w_up], axis=-1)  # (E, D, 2F)

    expert = indices.reshape(P)  # pair p = t * K + k
    counts = jnp.bincount(expert, length=E)
    rank = _queue_places(expert, E)
    kept = jnp.ones((P,), bool) if capacity is None else rank < capacity
    if capacity is not None:
        counts = jnp.minimum(counts, capacity)
    gate = jnp.concatenate([jnp.where(kept, gates.reshape(P), 0.0), jnp.zeros((1,), gates.dtype)])

    in_slot = kept & (rank < C)
    slot = jnp.where(in_slot, expert * C + rank, E * C)
    y = _expert_blocks(E, C, fp8, slot, gate, w_gate_up, w_down, x)

    # Overflow: R blocks of b rows for the pairs past the slots, or (a rarely needed branch) blocks
    # of C rows for however many there are.
    excess = jnp.maximum(counts - C, 0)
    ints = (expert, jnp.where(kept & ~in_slot, rank - C, -1), excess)
    floats = (gate, w_gate_up, w_down, x)
    every = _ceil_div(P, C) + E  # blocks of C rows: enough for any routing
    few, all_ = partial(_overflow_blocks, R, b, fp8), partial(_overflow_blocks, every, C, fp8)
    if R >= _ceil_div(P, b) + E:  # R blocks of b rows are enough for any routing
        y = y + few(ints, *floats)
    else:
        y = y + _lean_cond(few, all_, jnp.sum(_ceil_div(excess, b)) <= R, ints, *floats)
    return y.astype(x.dtype), kept.reshape(T, K)


def _fp8_hooks(fp8: FP8Config | None):
    """(quantize a GEMM input, quantize a GEMM output's gradient): identities without FP8."""
    if fp8 is None:
        return (lambda x: x), (lambda y: y)
    return (lambda x: fp8_expert_activation(x, fp8)), (lambda y: fp8_expert_output(y, fp8))


def _fp8_expert_inputs(x, w_gate, w_up, w_down, fp8: FP8Config | None):
    """Routed experts in simulated FP8 (DeepSeek-V3 §3.3): tokens in 1x128 tiles, each expert's
    weights in 128x128 blocks, and (through `_fp8_hooks`) the hidden activation in 1x128 tiles and
    every expert GEMM's output gradient in 1x128 tiles, so Fprop, Dgrad and Wgrad all read FP8
    values. Not simulated here, unlike `minids.fp8.Fp8Linear`: the limited-precision accumulator
    (expert GEMMs add in float32) and Wgrad's re-tiling along tokens (it reuses the 1x128 tiles
    of the activations and gradients). Gate and up are quantized as separate matrices, so the fast
    and reference dispatches see the same FP8 values."""
    if fp8 is None:
        return x, w_gate, w_up, w_down
    return (fp8_expert_activation(x, fp8), *(fp8_expert_weights(w, fp8) for w in (w_gate, w_up, w_down)))


# -------------------------------------------------------------------------------------- layer


class MoE(nnx.Module):
    """Shared experts + routed experts behind a router: `y, stats = moe(x)` for x (B, T, D)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg.moe, MoEConfig):
            raise TypeError(f"cfg.moe must be a MoEConfig, got {type(cfg.moe).__name__}")
        moe = self.moe_cfg = cfg.moe
        self.compute_dtype = cfg.compute_dtype
        E, D, F = moe.n_routed_experts, cfg.d_model, moe.expert_ffn_dim
        self.fp8 = cfg.fp8  # routed experts in simulated FP8; the router stays float32

        def init(shape, scale=1.0, dtype=cfg.weight_dtype):  # like layers.dense: N(0, scale / fan_in)
            fn = nnx.initializers.variance_scaling(scale, "fan_in", "normal", in_axis=-2,
                                                   out_axis=-1, batch_axis=(0,))
            return nnx.Param(fn(rngs.params(), shape, dtype))

        # Rows of the router weight are the expert centroids e_i of eq. 15. Gating stays in float32
        # whatever the compute dtype, as V3 keeps it (§3.3).
        self.expert_centroids = nnx.Param(nnx.initializers.variance_scaling(
            1.0, "fan_in", "normal", in_axis=-1, out_axis=-2)(rngs.params(), (E, D), jnp.float32))
        self.aux_free_bias = AuxFreeBias(jnp.zeros((E,), jnp.float32))
        self.routed_gate = init((E, D, F))
        self.routed_up = init((E, D, F))
        self.routed_down = init((E, F, D), scale=1.0 / (2 * cfg.n_layers))
        # N_s shared experts summed = one SwiGLU N_s times as wide (their hidden units concatenated).
        self.shared_experts = (
            SwiGLU(cfg, ffn_dim=moe.n_shared_experts * F, rngs=rngs) if moe.n_shared_experts else None
        )

    def __call__(self, x: Float[Array, "B T D"]) -> tuple[Float[Array, "B T D"], dict[str, Array]]:
        moe, E = self.moe_cfg, self.moe_cfg.n_routed_experts
        if x.ndim != 3 or x.shape[-1] != self.expert_centroids.shape[1]:
            raise ValueError(f"x must be (B, T, D) with D = {self.expert_centroids.shape[1]}, "
                             f"got shape {x.shape}")
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # one row per token
        logits = jnp.einsum("TD,ED->TE", tokens.astype(jnp.float32), self.expert_centroids[...])
        scores = router_scores(logits, moe.gate)
        bias = self.aux_free_bias[...] if moe.uses_bias else jnp.zeros((E,), jnp.float32)
        indices, gates = select_experts(scores, bias, moe)
        dispatch = dispatch_fast if moe.dispatch == "fast" else dispatch_reference
        cdt = self.compute_dtype
        routed, kept = dispatch(
            tokens.astype(cdt), indices, gates, self.routed_gate[...].astype(cdt),
            self.routed_up[...].astype(cdt), self.routed_down[...].astype(cdt),
            capacity=expert_capacity(B * T, moe), fp8=self.fp8,
        )
        y = routed.reshape(B, T, D)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x).astype(y.dtype)
        if moe.balancing == "aux_loss":
            aux_loss = expert_aux_loss(scores, indices, moe.aux_loss_alpha)
        elif moe.balancing.endswith("seq_aux_loss"):
            K = moe.experts_per_token
            aux_loss = sequence_aux_loss(scores.reshape(B, T, E), indices.reshape(B, T, K),
                                         moe.aux_loss_alpha)
        else:
            aux_loss = jnp.zeros((), jnp.float32)
        load = expert_load(indices, E)
        stats = {
            "load": load,  # (E,), fraction of the routed assignments, before any dropping
            "max_vio": jnp.max(load) * E - 1.0,  # max load / mean load - 1, V3's MaxVio
            "dropped_frac": 1.0 - jnp.mean(kept.astype(jnp.float32)),
            "aux_loss": aux_loss,  # already multiplied by alpha; 0 without a loss term
        }
        return y, stats

    def update_bias(self, load: Float[Array, " E"]) -> None:
        """After an optimizer step: move the aux-free bias toward balance (no-op without aux_free)."""
        if self.moe_cfg.uses_bias:
            self.aux_free_bias[...] = aux_free_bias_update(
                self.aux_free_bias[...], load, self.moe_cfg.bias_update_speed
            )


def moe_param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, activated) parameters of one MoE layer: activated = router + shared + K routed."""
    moe = cfg.moe
    if not isinstance(moe, MoEConfig):
        raise TypeError(f"cfg.moe must be a MoEConfig, got {type(moe).__name__}")
    per_expert = 3 * cfg.d_model * moe.expert_ffn_dim  # gate, up and down projections
    router = moe.n_routed_experts * cfg.d_model
    shared = moe.n_shared_experts * per_expert
    total = router + shared + moe.n_routed_experts * per_expert
    return total, router + shared + moe.experts_per_token * per_expert

"""Running each token through its chosen experts, fast: what `minids.moe.dispatch_reference` computes.

An MoE layer sends T tokens to K of E experts each: T*K (token, expert) pairs. The plain form,
`minids.moe.dispatch_reference`, runs every expert on every token and keeps the chosen results:
E/K times the work. `dispatch` runs each expert on its own pairs only, with the same outputs, the
same dropped assignments (capacity) and the same gradients (tests/test_kernels.py), by the route
each backend runs best:

- CPU: `dispatch_blocks`, a grouped matmul in fixed-size blocks of rows (the shapes a compiled XLA
  program needs). Every expert gets a fair share of slots, Y = T*K/E rows, and all E slot blocks run
  as one batched matmul. A busy expert's pairs past its slots go to overflow blocks of b = Y/8 rows,
  each block one expert's, in rounds of A blocks. Rows move between tokens and blocks by gathers,
  forward and backward (custom VJPs), because XLA:CPU runs the scatter-adds that autodiff would
  write much more slowly. MegaBlocks (Gale et al. 2022, arXiv 2211.15841) also drops nothing by
  computing in blocks, there with block-sparse GPU kernels.
- GPU and TPU: `dispatch_ragged`, the pairs sorted by expert and one `jax.lax.ragged_dot` per
  matrix (a grouped GEMM those backends implement natively), then unsorted and combined.

With an `FP8Config` both run the routed experts' GEMMs on simulated FP8 values, as the reference.

Shapes (letters of minids/model.py): T counts all tokens of the batch (B*T flattened), D model width,
E routed experts, K experts per token, F expert width (F2 = 2F: gate and up side by side). The block
layout adds its own letters, not used elsewhere: P = T*K pairs (pair p = t*K + k), A blocks of Y rows
each, `rows` = A*Y rows in all.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from minids.fp8 import FP8Config, fp8_expert_hooks, fp8_expert_inputs


def dispatch(
    x: Float[Array, "T D"],
    indices: Int[Array, "T K"],
    gates: Float[Array, "T K"],
    w_gate: Float[Array, "E D F"],
    w_up: Float[Array, "E D F"],
    w_down: Float[Array, "E F D"],
    capacity: int | Int[Array, ""] | None = None,
    fp8: FP8Config | None = None,
) -> tuple[Float[Array, "T D"], Bool[Array, "T K"]]:
    """`minids.moe.dispatch_reference`'s (y, kept), each expert on its own tokens: blocks on a CPU,
    `jax.lax.ragged_dot` on a GPU or TPU."""
    fast = dispatch_blocks if jax.default_backend() == "cpu" else dispatch_ragged
    return fast(x, indices, gates, w_gate, w_up, w_down, capacity, fp8)


def _queue_places(expert: Int[Array, " P"], n_experts: int) -> Int[Array, " P"]:
    """Each pair's place in its expert's queue (earlier tokens first), as `minids.moe.queue_places`."""
    choice = jax.nn.one_hot(expert, n_experts, dtype=jnp.int32)  # (P, E)
    return jnp.sum((jnp.cumsum(choice, axis=0) - 1) * choice, axis=1)


# ---------------------------------------------------------------------------------- GPU / TPU


def dispatch_ragged(
    x: Float[Array, "T D"],
    indices: Int[Array, "T K"],
    gates: Float[Array, "T K"],
    w_gate: Float[Array, "E D F"],
    w_up: Float[Array, "E D F"],
    w_down: Float[Array, "E F D"],
    capacity: int | Int[Array, ""] | None = None,
    fp8: FP8Config | None = None,
) -> tuple[Float[Array, "T D"], Bool[Array, "T K"]]:
    """Sort the T*K pairs by expert, run each expert's contiguous rows with `jax.lax.ragged_dot`
    (row group e is expert e's), and add each pair's output back to its token, gate-weighted.

    Dropped pairs (past an expert's capacity) are computed with a gate of 0: fixed shapes."""
    (T, K), E = indices.shape, w_gate.shape[0]
    P = T * K
    x, w_gate, w_up, w_down = fp8_expert_inputs(x, w_gate, w_up, w_down, fp8)
    fp8_in, fp8_out = fp8_expert_hooks(fp8)
    expert = indices.reshape(P)
    kept = jnp.ones((P,), bool) if capacity is None else _queue_places(expert, E) < capacity
    order = jnp.argsort(expert, stable=True)  # pairs grouped by expert, earlier tokens first
    group_sizes = jnp.bincount(expert, length=E).astype(jnp.int32)
    rows = x[order // K]  # (P, D): pair order[i]'s token
    gate = fp8_out(jax.lax.ragged_dot(rows, w_gate, group_sizes))
    up = fp8_out(jax.lax.ragged_dot(rows, w_up, group_sizes))
    hidden = fp8_in(jax.nn.silu(gate) * up)
    out = fp8_out(jax.lax.ragged_dot(hidden, w_down, group_sizes))  # (P, D), sorted
    weight = jnp.where(kept, gates.reshape(P), 0.0)[order]
    y = (
        jnp.zeros((T, x.shape[1]), jnp.float32)
        .at[order // K]
        .add(out.astype(jnp.float32) * weight[:, None])
    )
    return y.astype(x.dtype), kept.reshape(T, K)


# ---------------------------------------------------------------------------------------- CPU


def _ceil_div(n, d):
    return -(-n // d)


def _round_up(n: int, multiple: int) -> int:
    return _ceil_div(n, multiple) * multiple


def _block_sizes(pairs: int, n_experts: int) -> tuple[int, int, int]:
    """(slots per expert Y, rows per overflow block b, overflow blocks per round A) of `dispatch_blocks`.

    Y is a fair share of the T*K pairs, rounded up to 8 rows: at perfect balance every pair has a
    slot. An overflow block holds b = Y/8 rows (at least 8) of one expert, and a round has A = 5E/8
    of them: room for 1/16 of the pairs, in the last, partly filled block of each busy expert too.
    The untrained routers of benchmarks/bench_moe.py (MaxVio 0.13-0.19) need 4 of 5 such blocks
    (E = 8) and 9 of 10 (E = 16). Blocks of Y/16 rows ran slower: a matmul of so few rows spends
    more time reading its block's weights than multiplying.
    """
    Y = _round_up(_ceil_div(pairs, n_experts), 8)
    return Y, _round_up(max(Y // 8, 8), 8), _ceil_div(5 * n_experts, 8)


@jax.custom_vjp
def _to_rows(x: Float[Array, "T D"], row_token: Int[Array, " rows"], token_rows: Int[Array, "T K"]):
    """The block rows: row r is a copy of token row_token[r].

    A row that no pair fills (row_token = T) is a copy of the last token rather than zeros, which
    saves a `where` over the whole array: its gate is 0, so it adds nothing to any output or any
    weight's gradient (its gate's own gradient goes to gate[P], a constant). `token_rows` is the
    same map read from the tokens, for the gradient.
    """
    return x[jnp.minimum(row_token, x.shape[0] - 1)]


@jax.custom_vjp
def _to_tokens(
    rows: Float[Array, "rows D"], token_rows: Int[Array, "T K"], row_token: Int[Array, " rows"]
):
    """Each token's sum of its rows: out[t] = sum_k rows[token_rows[t, k]], where R names no row.

    The gradient of each of `_to_rows` and `_to_tokens` is the other: gathers both ways, no
    scatter-add, which XLA:CPU runs much more slowly.
    """
    R = rows.shape[0]
    picked = jnp.where((token_rows < R)[..., None], rows[jnp.minimum(token_rows, R - 1)], 0)
    return jnp.sum(picked, axis=1)


_to_rows.defvjp(
    lambda x, row_token, token_rows: (_to_rows(x, row_token, token_rows), (row_token, token_rows)),
    lambda res, g: (_to_tokens(g, res[1], res[0]), None, None),
)
_to_tokens.defvjp(
    lambda rows, token_rows, row_token: (
        _to_tokens(rows, token_rows, row_token),
        (token_rows, row_token),
    ),
    lambda res, g: (_to_rows(g, res[1], res[0]), None, None),
)


@jax.custom_vjp
def _swiglu_halves(gate_up: Float[Array, "... F2"]) -> Float[Array, "... F"]:
    """silu(a) * u for gate_up = [a | u], with a gradient written as one array [da | du].

    Autodiff of the two slices would write da and du separately and then pad and add them into
    one (..., 2F) array: a pass over the largest activation of the expert FFN that this skips.
    silu(a) is written a / (1 + exp(-a)) here and with `sigmoid` in the backward pass, so that
    XLA does not merge the two into one sigmoid kept in memory: the forward's then fuses into
    the down matmul that reads it.
    """
    F = gate_up.shape[-1] // 2
    a = gate_up[..., :F]
    return a / (1 + jnp.exp(-a)) * gate_up[..., F:]


def _swiglu_halves_bwd(gate_up, g):
    F = gate_up.shape[-1] // 2
    a, u = gate_up[..., :F], gate_up[..., F:]
    sig = jax.nn.sigmoid(a)
    silu = a * sig
    # d silu(a) / da = sig + silu * (1 - sig)
    return (jnp.concatenate([g * u * (sig + silu * (1 - sig)), g * silu], axis=-1),)


_swiglu_halves.defvjp(lambda gate_up: (_swiglu_halves(gate_up), gate_up), _swiglu_halves_bwd)


def _expert_ffn(
    rows: Float[Array, "A Y D"],
    w_gate_up: Float[Array, "A D F2"],
    w_down: Float[Array, "A F D"],
    fp8: FP8Config | None,
    scale=None,
) -> Float[Array, "A Y D"]:
    """SwiGLU of block n's rows with block n's weights, three batched matmuls (gate and up as one)."""
    fp8_in, fp8_out = fp8_expert_hooks(fp8)
    F = w_down.shape[1]
    gate_up = jnp.einsum("AYD,ADF->AYF", rows, w_gate_up)
    if fp8 is None:
        hidden = _swiglu_halves(gate_up)
    else:  # each half's gradient is quantized on its own, as in the reference
        hidden = fp8_in(jax.nn.silu(fp8_out(gate_up[..., :F])) * fp8_out(gate_up[..., F:]))
    if scale is not None:
        hidden = hidden * scale.astype(hidden.dtype)
    return fp8_out(jnp.einsum("AYF,AFD->AYD", hidden, w_down))


def _expert_blocks(
    n: int,
    size: int,
    fp8: FP8Config | None,
    pair_row: Int[Array, " P"],
    gate: Float[Array, " P1"],
    w_gate_up: Float[Array, "A D F2"],
    w_down: Float[Array, "A F D"],
    x: Float[Array, "T D"],
) -> Float[Array, "T D"]:
    """Fill n blocks of `size` rows from the T*K pairs (pair p to row pair_row[p]; n * size for
    none), apply block i's weights to block i's rows, and return each token's sum of its pairs'
    outputs weighted by gate[p] (gate[P] = 0)."""
    rows, (T, D), P = n * size, x.shape, pair_row.shape[0]
    K = P // T
    row_pair = (
        jnp.full((rows + 1,), P, jnp.int32).at[pair_row].set(jnp.arange(P, dtype=jnp.int32))[:rows]
    )
    row_token = jnp.where(row_pair < P, row_pair // K, T)
    token_rows = pair_row.reshape(T, K)
    block = _to_rows(x, row_token, token_rows).reshape(n, size, D)
    row_gate = gate[row_pair]
    if fp8 is None:  # the gate scales the hidden activation: one multiply fused into SwiGLU's
        out = _expert_ffn(block, w_gate_up, w_down, fp8, row_gate.reshape(n, size, 1)).reshape(
            rows, D
        )
    else:  # FP8: the down GEMM must read the quantized activation itself
        out = _expert_ffn(block, w_gate_up, w_down, fp8).reshape(rows, D)
        out = out.astype(jnp.float32) * row_gate.astype(jnp.float32)[:, None]
    return _to_tokens(out.astype(jnp.float32), token_rows, row_token)


@jax.custom_vjp
def _take_blocks(w: Float[Array, "E ..."], owner: Int[Array, " A"]) -> Float[Array, "A ..."]:
    """w[owner]: a copy of its expert's weights for each overflow block.

    The gradient adds each block's copy back into its expert's with a one-hot matmul,
    (E, R) @ (R, ...), where autodiff would zero-fill an (E, ...) array and scatter-add into it.
    """
    return w[owner]


def _take_blocks_bwd(residuals, g):
    owner, n_experts = residuals
    one_hot = jax.nn.one_hot(owner, n_experts, dtype=g.dtype)  # (A, E)
    return jnp.tensordot(one_hot, g, axes=(0, 0)), None


_take_blocks.defvjp(lambda w, owner: (w[owner], (owner, w.shape[0])), _take_blocks_bwd)


def _overflow_round(
    r: Int[Array, ""] | int,
    n: int,
    size: int,
    fp8: FP8Config | None,
    ints: tuple[Array, Array, Array],
    gate: Float[Array, " P1"],
    w_gate_up: Float[Array, "E D F2"],
    w_down: Float[Array, "E F D"],
    x: Float[Array, "T D"],
) -> Float[Array, "T D"]:
    """Round r of the overflow: `_expert_blocks` over n blocks of `size` rows.

    Expert e's pairs past its slots (past[p] >= 0: the place after the slots; -1 for other pairs)
    fill ceil(excess_e / size) consecutive blocks of one long list, expert after expert; round r
    runs blocks r*n .. r*n + n - 1 of that list, each with a copy of its expert's weights (blocks
    past the end of the list hold no pair, only gates of 0, so any expert's weights will do).
    """
    expert, past, excess = ints
    E = w_gate_up.shape[0]
    per_expert = _ceil_div(excess, size)
    ends = jnp.cumsum(per_expert)  # expert e's blocks are ends[e] - per_expert[e] .. ends[e] - 1
    row = (ends[expert] - per_expert[expert] - r * n) * size + past  # row within this round
    row = jnp.where((past >= 0) & (row >= 0) & (row < n * size), row, n * size)
    owner = jnp.sum(ends[None, :] <= r * n + jnp.arange(n)[:, None], axis=1)  # block i's expert
    owner = jnp.minimum(owner, E - 1)
    return _expert_blocks(
        n, size, fp8, row, gate, _take_blocks(w_gate_up, owner), _take_blocks(w_down, owner), x
    )


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _overflow(
    n: int,
    size: int,
    fp8: FP8Config | None,
    rounds: Int[Array, ""],
    ints: tuple[Array, Array, Array],
    *floats: Array,
) -> Float[Array, "T D"]:
    """The overflow in `rounds` rounds of `_overflow_round`: round 0 always runs, the others (a
    router far out of balance) in a loop whose trip count is data, which reverse-mode autodiff
    does not allow; hence this VJP. Its backward pass reuses round 0's saved activations and
    recomputes any further rounds, one at a time."""
    y = _overflow_round(0, n, size, fp8, ints, *floats)
    return _later_rounds(n, size, fp8, rounds, ints, floats, y)


def _later_rounds(n, size, fp8, rounds, ints, floats, y):
    """y plus rounds 1 .. rounds - 1 (none for almost every router)."""
    return jax.lax.fori_loop(
        1, rounds, lambda r, y: y + _overflow_round(r, n, size, fp8, ints, *floats), y
    )


def _overflow_fwd(n, size, fp8, rounds, ints, *floats):
    y, round_0_vjp = jax.vjp(lambda *f: _overflow_round(0, n, size, fp8, ints, *f), *floats)
    return _later_rounds(n, size, fp8, rounds, ints, floats, y), (round_0_vjp, rounds, ints, floats)


def _overflow_bwd(n, size, fp8, residuals, g):
    round_0_vjp, rounds, ints, floats = residuals

    def add_round(r, grads):
        more = jax.vjp(lambda *f: _overflow_round(r, n, size, fp8, ints, *f), *floats)[1](g)
        return tuple(a + b for a, b in zip(grads, more, strict=True))

    grads = jax.lax.fori_loop(1, rounds, add_round, round_0_vjp(g))
    return (None, None, *grads)


_overflow.defvjp(_overflow_fwd, _overflow_bwd)


def dispatch_blocks(
    x: Float[Array, "T D"],
    indices: Int[Array, "T K"],
    gates: Float[Array, "T K"],
    w_gate: Float[Array, "E D F"],
    w_up: Float[Array, "E D F"],
    w_down: Float[Array, "E F D"],
    capacity: int | Int[Array, ""] | None = None,
    fp8: FP8Config | None = None,
    *,
    blocks: tuple[int, int, int] | None = None,
) -> tuple[Float[Array, "T D"], Bool[Array, "T K"]]:
    """Each expert on its own tokens only, as a grouped matmul in fixed-size blocks of rows.

    1. The T*K (token, expert) pairs queue per expert, earlier tokens first (the order capacity
       dropping also uses): `rank` is a pair's place in its expert's queue.
    2. The first Y pairs of every queue fill block e of an (E, Y, D) array of slots, Y a fair
       share (`_block_sizes`). Its matmuls are batched over the experts: one (Y, D) @ (D, 2F) and
       one (Y, F) @ (F, D) per expert, the matmul every backend runs fastest.
    3. The pairs past Y, in the queues of the busier experts, fill overflow blocks of b rows, each
       block one expert's, whose weights are copied in. A round runs A blocks; a router so
       unbalanced that one round is not enough runs more (`_overflow`).
    4. Each token sums its experts' outputs, weighted by their gates. Slots and block rows that no
       pair fills have a gate of 0: their work is the price of fixed shapes.

    Rows move between tokens and blocks by gathers (`_to_rows`, `_to_tokens`), forward and backward.
    `blocks` overrides (Y, b, A), for tests.
    """
    (T, K), E = indices.shape, w_gate.shape[0]
    P = T * K
    Y, b, A = _block_sizes(P, E) if blocks is None else blocks
    x, w_gate, w_up, w_down = fp8_expert_inputs(x, w_gate, w_up, w_down, fp8)
    w_gate_up = jnp.concatenate([w_gate, w_up], axis=-1)  # (E, D, 2F)

    expert = indices.reshape(P)  # pair p = t * K + k
    counts = jnp.bincount(expert, length=E)
    rank = _queue_places(expert, E)
    kept = jnp.ones((P,), bool) if capacity is None else rank < capacity
    if capacity is not None:
        counts = jnp.minimum(counts, capacity)
    gate = jnp.concatenate([jnp.where(kept, gates.reshape(P), 0.0), jnp.zeros((1,), gates.dtype)])

    in_slot = kept & (rank < Y)
    slot = jnp.where(in_slot, expert * Y + rank, E * Y)
    y = _expert_blocks(E, Y, fp8, slot, gate, w_gate_up, w_down, x)

    excess = jnp.maximum(counts - Y, 0)
    past = jnp.where(kept & ~in_slot, rank - Y, -1)
    rounds = _ceil_div(jnp.sum(_ceil_div(excess, b)), A)
    y = y + _overflow(A, b, fp8, rounds, (expert, past, excess), gate, w_gate_up, w_down, x)
    return y.astype(x.dtype), kept.reshape(T, K)

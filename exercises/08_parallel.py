"""Exercise 08: what expert parallelism sends, and a zero-bubble pipeline schedule.

Notebook 08 spreads the routed experts of an MoE layer over P devices and moves each token to the
devices that hold its experts with an all-to-all (DeepSeek-V3 §3.2.2), then simulates pipeline
schedules (1F1B and DualPipe, V3 §3.2.1). You will write three pieces it uses but does not write
out line for line:

1. `devices_reached`: how many devices one token's K experts live on, the number of copies of the
   token that cross the wire; V3's node-limited routing caps it at M = 4 (§2.1.2).
2. `dispatch_slots`: where each token's row goes in the send buffer, with a per-device capacity.
3. `order_zb1p`: the order of work on each device in ZB-H1, the zero-bubble schedule that DualPipe's
   table calls ZB1P (Qi et al. 2023, arXiv 2401.10241, §2.2).

Shapes: T tokens, K experts per token, E experts, P devices on the expert axis.

Points: 15 in all (devices_reached 4, dispatch_slots 5, order_zb1p 6); every check is worth 1.

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_08_parallel.py` (add `-x` to stop at the first
  failure, `-k zb1p` for the schedule only). Every failure message says what was expected.
- The first two run under `jax.jit`: use `jnp`, `jax.nn.one_hot` and `jnp.cumsum`, no Python loops
  over tokens. The third is plain Python: it returns lists.

When all checks pass, compare with `minids/parallel.py` (`devices_reached`, `dispatch_slots`) and
`minids/pipeline.py` (`order_zb1p`), which the grader uses as the answer key.
"""

from __future__ import annotations

import jax  # noqa: F401  (you will want jax.nn.one_hot)
import jax.numpy as jnp  # noqa: F401
from jaxtyping import Array, Int


def devices_reached(indices: Int[Array, "T K"], n_experts: int, n_devices: int) -> Int[Array, " T"]:
    """How many different devices each token's K chosen experts live on.

    The E experts are split evenly and in order over the P devices: device d holds experts
    d * E/P, ..., (d + 1) * E/P - 1. A token whose two experts both sit on device 1 reaches one
    device; it is sent there once, with both of its gates.

    Args:
        indices: (T, K) the chosen experts of each token (K different ones per token).
        n_experts: E, a multiple of n_devices.
        n_devices: P.

    Returns:
        (T,) integer array: for each token, the number of distinct devices among its K experts.

    Hints: `indices // (E // P)` is the device of each choice; `jax.nn.one_hot(..., P)` then
    `jnp.any(..., axis=1)` marks which devices a token reaches.

    The grader checks (4 points): shape; a hand-worked example; every value lies in [1, min(K, P)];
    with groups mapped to devices (V3's node-limited routing) a token reaches at most M devices.
    """
    raise NotImplementedError


def dispatch_slots(
    indices: Int[Array, "T K"], n_experts: int, n_devices: int, slots: int
) -> Int[Array, "T P"]:
    """Where each token's row goes in the send buffer of shape (P, slots, D).

    Token t sends device d one row if any of its experts lives on d. The rows bound for device d
    fill block d of the buffer in token order: the first such token takes place 0, the next place
    1, and so on. A block has `slots` places (the per-device capacity); a row that would come past
    them is dropped.

    Args:
        indices: (T, K) the chosen experts of each token.
        n_experts: E, a multiple of n_devices.
        n_devices: P.
        slots: Y, places per block.

    Returns:
        (T, P) int32 array: slot[t, d] = the place of token t's row in block d, or `slots` if
        token t sends device d no row (none of its experts is there) or its row was dropped.

    Hints: mark which devices each token reaches (as in `devices_reached`, without the sum); a
    running count down the tokens, `jnp.cumsum(..., axis=0) - 1`, gives each row its place.

    The grader checks (5 points): shape and dtype; a hand-worked example; with slots >= T nothing
    is dropped and every block's places are 0, 1, 2, ...; with few slots exactly the rows past
    them are dropped; it works under `jax.jit`.
    """
    raise NotImplementedError


def order_zb1p(stages: int, micro: int) -> list[list[tuple]]:
    """The ZB-H1 order of work on each of `stages` devices, for `micro` micro-batches.

    A backward pass splits in two: ("Bz", 0) computes the gradient for the stage's input (the
    previous stage waits for it) and queues the gradient for the weights, which a later ("W",)
    computes (nobody waits for it). ("F", 0) is a forward. Device i (0 = first stage) runs:

        PP-1-i forwards;
        then i pairs        F, Bz          (the pipeline is still filling: no W yet)
        then triples        F, Bz, W       while forwards remain (micro - PP + 1 of them)
        then PP-1-i pairs   Bz, W          (draining)
        then i single       W

    where PP = stages. Pushed late, the W passes fill what would have been idle time: the bubble
    falls from 1F1B's (PP-1)(F+B) to (PP-1)(F+B-2W), with the same peak memory (PP micro-batches'
    activations on the first device).

    Args:
        stages: PP >= 2.
        micro: m >= stages.

    Returns:
        A list of `stages` lists; list i holds device i's work in order, each item a tuple:
        ("F", 0), ("Bz", 0) or ("W",).

    The grader checks (6 points): one list per device; each device runs m of each kind; device 0
    starts with PP-1 forwards and device PP-1 with one forward and then alternates; a W never comes
    before its backward; simulated (`minids.pipeline.simulate`), the bubble is (PP-1)(F+B-2W) and
    peak activations PP; it refuses micro < stages with a ValueError.
    """
    raise NotImplementedError

"""Grader for exercise 08 (expert parallelism's sends, ZB1P): `pytest exercises/test_08_parallel.py`.

Each test checks one property of your `devices_reached`, `dispatch_slots` or `order_zb1p` in
`exercises/08_parallel.py` and, when it fails, says what it expected and what it got. With
`MINIDS_EXERCISES=solutions` the same tests grade minids' own implementations (the answer key).

The expected numbers are worked out here by hand or with a few lines of numpy, never by calling the
answer key. The schedule is run by minids' simulator, which only executes the order you give it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minids.config import MoEConfig
from minids.grading import (
    check_close,
    check_dtype,
    check_shape,
    explain_tracer_errors,
    fail,
    load_exercise,
)
from minids.moe import router_scores, select_experts
from minids.pipeline import Times, simulate

exercise = load_exercise(
    Path(__file__).with_name("08_parallel.py"),
    solutions={
        "devices_reached": "minids.parallel",
        "dispatch_slots": "minids.parallel",
        "order_zb1p": "minids.pipeline",
    },
)
devices_reached = exercise.devices_reached
dispatch_slots = exercise.dispatch_slots
order_zb1p = exercise.order_zb1p

REACHED, SLOTS, ZB1P = "devices_reached", "dispatch_slots", "order_zb1p"
# 5 tokens, K = 2 of E = 8 experts on P = 4 devices (experts 2d and 2d + 1 on device d)
INDICES = np.array([[0, 1], [0, 7], [2, 5], [6, 7], [3, 4]], np.int32)
REACHED_BY_HAND = [1, 2, 2, 1, 2]
# the devices each token reaches: {0}, {0, 3}, {1, 2}, {3}, {1, 2}; places fill in token order
SLOTS_BY_HAND = np.array(  # 9 = no row (slots = 9)
    [[0, 9, 9, 9], [1, 9, 9, 0], [9, 0, 0, 9], [9, 9, 9, 1], [9, 1, 1, 9]], np.int32
)


def random_indices(T=64, E=16, K=4, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.stack([rng.choice(E, K, replace=False) for _ in range(T)]), jnp.int32)


# -------------------------------------------------------------------------------- devices_reached


def test_reached_shape():
    check_shape(REACHED, devices_reached(jnp.asarray(INDICES), 8, 4), (5,), letters="T")


def test_reached_hand_worked_example():
    check_close(
        REACHED,
        devices_reached(jnp.asarray(INDICES), 8, 4),
        REACHED_BY_HAND,
        what="devices reached by tokens with experts [0,1], [0,7], [2,5], [6,7], [3,4]",
        hint="device of expert e = e // (E // P); count the distinct devices in each row.",
    )


def test_reached_lies_between_one_and_min_k_p():
    got = np.asarray(devices_reached(random_indices(), 16, 4))
    if got.min() < 1 or got.max() > 4:
        fail(
            f"{REACHED}: every token reaches between 1 and min(K, P) = 4 devices, got {got.min()}..{got.max()}"
        )


def test_node_limited_routing_caps_the_devices():
    logits = jax.random.normal(jax.random.key(0), (256, 16))
    cfg = MoEConfig(n_routed_experts=16, experts_per_token=4, n_groups=4, groups_per_token=2)
    indices, _ = select_experts(router_scores(logits, "sigmoid"), jnp.zeros(16), cfg)
    got = np.asarray(devices_reached(indices, 16, 4))
    if got.max() > 2 or got.min() < 1:
        fail(
            f"{REACHED}: with 4 groups mapped to 4 devices and 2 groups per token, a token reaches "
            f"at most 2 devices; got values {sorted(set(got.tolist()))}"
        )


# -------------------------------------------------------------------------------- dispatch_slots


def test_slots_shape_and_dtype():
    got = dispatch_slots(jnp.asarray(INDICES), 8, 4, 9)
    check_shape(SLOTS, got, (5, 4), letters="T P")
    check_dtype(SLOTS, got, np.int32, hint="return integer places: .astype(jnp.int32)")


def test_slots_hand_worked_example():
    check_close(
        SLOTS,
        dispatch_slots(jnp.asarray(INDICES), 8, 4, 9),
        SLOTS_BY_HAND,
        what="places with 9 slots per block (9 = no row)",
        hint="a row's place in block d counts the earlier tokens that also reach device d.",
    )


def test_slots_without_drops_fill_each_block_in_order():
    indices = random_indices()
    got = np.asarray(dispatch_slots(indices, 16, 4, 64))
    device = np.asarray(indices) // 4
    for d in range(4):
        reaches = np.any(device == d, axis=1)
        places = got[reaches, d]
        if not np.array_equal(places, np.arange(reaches.sum())):
            fail(
                f"{SLOTS}: block {d} should hold places 0, 1, 2, ... in token order, got {places[:8]}..."
            )
        if np.any(got[~reaches, d] != 64):
            fail(f"{SLOTS}: tokens that send device {d} nothing should get slots = 64 there")


def test_slots_drop_exactly_the_rows_past_capacity():
    indices = random_indices()
    full = np.asarray(dispatch_slots(indices, 16, 4, 64))
    got = np.asarray(dispatch_slots(indices, 16, 4, 5))
    want = np.where(full < 5, full, 5)
    check_close(
        SLOTS,
        got,
        want,
        what="places with 5 slots per block",
        hint="a row whose place would be 5 or more is dropped: give it `slots`.",
    )


def test_slots_work_under_jit():
    with explain_tracer_errors(SLOTS, "jax.jit"):
        got = jax.jit(dispatch_slots, static_argnums=(1, 2, 3))(jnp.asarray(INDICES), 8, 4, 9)
    check_close(SLOTS, got, SLOTS_BY_HAND, what="under jax.jit")


# ------------------------------------------------------------------------------------ order_zb1p


def _orders(stages, micro):
    orders = order_zb1p(stages, micro)
    if not isinstance(orders, list) or len(orders) != stages:
        fail(
            f"{ZB1P}: expected a list of {stages} lists (one per device), got {type(orders).__name__}"
        )
    return orders


def test_zb1p_one_list_per_device_with_m_of_each_kind():
    for d, order in enumerate(_orders(4, 8)):
        kinds = [item[0] for item in order]
        counts = {k: kinds.count(k) for k in ("F", "Bz", "W")}
        if counts != {"F": 8, "Bz": 8, "W": 8} or len(kinds) != 24:
            fail(f"{ZB1P}: device {d} should run 8 each of F, Bz and W (24 items), got {counts}")


def test_zb1p_first_and_last_devices_start_as_the_schedule_says():
    orders = _orders(4, 8)
    first = [item[0] for item in orders[0][:4]]
    last = [item[0] for item in orders[3][:6]]
    if first != ["F", "F", "F", "F"] or last != ["F", "Bz", "F", "Bz", "F", "Bz"]:
        fail(
            f"{ZB1P}: device 0 should start F F F F (PP-1 = 3 warm-up forwards, then a triple), "
            f"device 3 with F Bz F Bz F Bz; got {first} and {last}"
        )


def test_zb1p_never_runs_a_w_before_its_backward():
    for d, order in enumerate(_orders(6, 10)):
        pending = 0
        for item in order:
            pending += {"Bz": 1, "W": -1}.get(item[0], 0)
            if pending < 0:
                fail(f"{ZB1P}: device {d} runs a W with no backward waiting for it")


def test_zb1p_simulated_bubble_is_the_tables():
    times = Times(F=1.0, B=2.0, W=1.0)
    for stages, micro in ((4, 8), (6, 10)):
        timeline = simulate("zb1p", stages, micro, times, orders=_orders(stages, micro))
        bubble = max(timeline.bubbles())
        if bubble != pytest.approx((stages - 1) * (1.0 + 2.0 - 2 * 1.0)):
            fail(
                f"{ZB1P}: PP={stages}, m={micro}, F=1, B=2, W=1: the bubble should be "
                f"(PP-1)(F+B-2W) = {stages - 1}, simulated {bubble}"
            )


def test_zb1p_peak_activations_are_pp():
    timeline = simulate("zb1p", 4, 8, Times(), orders=_orders(4, 8))
    if max(timeline.activations()) != 4:
        fail(f"{ZB1P}: the peak activations should be PP = 4, got {timeline.activations()}")


def test_zb1p_refuses_fewer_micro_batches_than_stages():
    try:
        order_zb1p(4, 3)
    except ValueError:
        return
    fail(f"{ZB1P}: order_zb1p(4, 3) should raise ValueError (it needs micro >= stages)")

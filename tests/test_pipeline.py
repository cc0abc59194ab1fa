"""The pipeline-schedule simulator reproduces DualPipe's table (V3 Table 2): bubbles and memory."""

from __future__ import annotations

import numpy as np
import pytest

from minids.pipeline import SCHEDULES, Times, bubble_formula, simulate


def _times(rng, overlap: bool) -> Times:
    """Random durations with F = B - W (a forward as long as a backward-for-input) and W <= B - W."""
    W = float(rng.uniform(0.25, 1.0))
    F = float(rng.uniform(W, 2.5 * W))
    B = F + W
    FB = float(rng.uniform(max(F, B), F + B)) if overlap else None
    return Times(F=F, B=B, W=W, FB=FB)


@pytest.mark.parametrize("stages,micro", [(4, 8), (6, 12), (8, 20)])
def test_bubbles_match_the_dualpipe_table(stages, micro):
    rng = np.random.default_rng(stages * 100 + micro)
    for overlap in (False, True):
        for _ in range(3):
            times = _times(rng, overlap)
            for schedule in SCHEDULES:
                bubbles = simulate(schedule, stages, micro, times).bubbles()
                assert max(bubbles) == pytest.approx(bubble_formula(schedule, stages, times)), (
                    schedule,
                    times,
                )
                if schedule != "dualpipe":  # every device of 1F1B and ZB1P idles as long
                    assert min(bubbles) == pytest.approx(max(bubbles))


@pytest.mark.parametrize("stages", [4, 8])
def test_memory_columns_of_the_table(stages):
    micro = 3 * stages
    expected = {"1f1b": (1, stages), "zb1p": (1, stages), "dualpipe": (2, stages + 1)}
    for schedule, (parameters, activations) in expected.items():
        timeline = simulate(schedule, stages, micro, Times(F=1.0, B=2.0, W=1.0))
        assert max(timeline.parameters) == min(timeline.parameters) == parameters, schedule
        assert max(timeline.activations()) == activations, schedule
    # 1F1B's stages hold fewer the further down the pipeline: PP, PP-1, ..., 1
    assert simulate("1f1b", stages, micro).activations() == list(range(stages, 0, -1))


def test_each_device_does_all_its_work_in_dependency_order():
    timeline = simulate("dualpipe", 8, 16, Times(F=1.0, B=2.0, W=1.0, FB=2.5, comm=0.25))
    for ops in timeline.ops:
        assert all(a.end <= b.start + 1e-9 for a, b in zip(ops, ops[1:], strict=False))
        forwards = sum(o.kind in ("F", "FB") for o in ops)
        backwards = sum(o.kind in ("B", "Bi", "FB") for o in ops)
        assert forwards == 16 and backwards == 16  # 8 micro-batches each way, F and B of each
    # communication only lengthens the run
    assert timeline.makespan > simulate("dualpipe", 8, 16, Times(F=1, B=2, W=1, FB=2.5)).makespan


def test_dualpipe_halves_the_bubble_of_zb1p_at_equal_units():
    t = Times(F=1.0, B=2.0, W=1.0)  # F = B_in = W, no gain from the overlap: F&B = F + B
    bubbles = {s: max(simulate(s, 8, 20, t).bubbles()) for s in SCHEDULES}
    assert bubbles == {"1f1b": 21.0, "zb1p": 7.0, "dualpipe": 6.0}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        simulate("gpipe", 4, 8)
    with pytest.raises(ValueError, match="even"):
        simulate("dualpipe", 5, 10)
    with pytest.raises(ValueError, match="W"):
        Times(F=1.0, B=1.0, W=2.0)

"""Pipeline schedules simulated: 1F1B, ZB1P and DualPipe, their bubbles and their memory.

How it works. Pipeline parallelism cuts the model's layers into PP stages, one per device, and the
batch into m micro-batches that flow through the stages: forward down the pipeline, backward up.
A device waits whenever the work it needs is still on another device; the idle time is the
*bubble*. Each schedule is an order of work on every device:

- **1F1B** (PipeDream-flush; Narayanan et al. 2021): stage i runs PP-1-i forwards to fill the
  pipeline, then alternates one forward and one backward, then drains. At most PP micro-batches'
  activations are alive on a device (stage 0).
- **ZB1P**, the ZB-H1 schedule of Zero Bubble Pipeline Parallelism (Qi et al. 2023, arXiv
  2401.10241, §2.2): a backward pass is two pieces, the gradient for the input (B_in, which the
  previous stage waits for) and the gradient for the weights (W, which nobody waits for). Stage i
  runs PP-1-i forwards, then i pairs of (F, B_in), then (F, B_in, W) triples, then drains with
  (B_in, W) pairs and i last W: the W passes, pushed late, fill what were bubbles. Same peak
  memory as 1F1B: an activation is freed by its W.
- **DualPipe** (DeepSeek-V3 §3.2.1, Figure 5; the DualPipe repository): micro-batches enter from
  both ends of the pipeline at once. Device r holds stage r of the downward pipeline and stage
  PP-1-r of the upward one: two stages, so 2x the parameters. In the steady state each device
  runs a forward of one direction *together with* a backward of the other ("F&B"): one's
  computation hides the other's communication (the all-to-alls of expert parallelism), so a pair
  costs F&B rather than F + B. The eight phases of a device's order follow `dualpipe.py` of the
  repository (step 1 "nF0" ... step 8 "nW"), with the zero-bubble split of B where it uses it.

The simulator (`simulate`) takes each device's order of operations, and the durations F, B (the
*full* backward, B_in + W, as DualPipe's table counts it), W, F&B and a communication time for a
hop between devices, and starts every operation as early as its device and its inputs allow. It
returns each operation's start and end (`Timeline`, which `minids.diagrams.parallel` draws), each
device's bubble (the run's length minus the device's busy time) and its peak activation memory.

What it reproduces: the table of the DualPipe repository (and V3 Table 2), with communication time
zero and a forward as long as a backward-for-input (F = B - W, the usual assumption; ZB1P's line
also needs W <= B - W), as `tests/test_pipeline.py` checks for several PP, m, F, B, W and F&B:

    schedule   bubble                     parameters   activations (micro-batches, one stage each)
    1F1B       (PP-1)(F+B)                1x           PP
    ZB1P       (PP-1)(F+B-2W)             1x           PP
    DualPipe   (PP/2-1)(F&B+B-3W)         2x           PP+1

The bubble of DualPipe is that of its longest-idle device; the others idle as long or less.
Outside those assumptions the simulated bubbles move away from the table's, and the simulator
says by how much (`bubble_formula` beside `Timeline.bubbles`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

from minids.config import check_choice, check_int, check_number

SCHEDULES = ("1f1b", "zb1p", "dualpipe")


@dataclass(frozen=True)
class Times:
    """Durations of one stage's work on one micro-batch. `B` is the full backward (B_in + W)."""

    F: float = 1.0
    B: float = 2.0
    W: float = 1.0
    FB: float | None = None  # F&B, a forward and a backward overlapped; None: F + B, no overlap
    comm: float = 0.0  # a hop between devices (sent activations or gradients)

    def __post_init__(self) -> None:
        for name in ("F", "B"):
            check_number(name, getattr(self, name), 0.0, low_open=True)
        check_number("W", self.W, 0.0, self.B)
        check_number("comm", self.comm, 0.0)
        if self.FB is not None:
            check_number("FB (F&B)", self.FB, 0.0, low_open=True)

    @property
    def overlapped(self) -> float:
        return self.F + self.B if self.FB is None else self.FB


@dataclass(frozen=True)
class Op:
    """One piece of work on a device: kind F, B (full backward), Bi (input part only), W, or FB
    (F of `micro` in direction `direction` overlapped with B of `micro2` in `direction2`)."""

    kind: str
    direction: int
    micro: int
    direction2: int = -1
    micro2: int = -1
    start: float = 0.0
    end: float = 0.0


@dataclass
class Timeline:
    """A simulated schedule: every device's operations with their times, bubbles and memory."""

    schedule: str
    stages: int
    micro_batches: int
    times: Times
    ops: list[list[Op]]  # per device, in order
    parameters: list[int]  # stages held per device (1 or 2)

    @property
    def makespan(self) -> float:
        return max(op.end for ops in self.ops for op in ops)

    def busy(self, device: int) -> float:
        return sum(op.end - op.start for op in self.ops[device])

    def bubbles(self) -> list[float]:
        """Each device's idle time within the run: makespan - its busy time."""
        return [self.makespan - self.busy(d) for d in range(self.stages)]

    def activations(self) -> list[int]:
        """Each device's peak count of live activations (one micro-batch through one stage each).
        A forward makes one; the full backward or the W that ends its backward frees it."""
        peaks = []
        for ops in self.ops:
            events = []
            for op in ops:
                if op.kind in ("F", "FB"):
                    events.append((op.start, +1))
                if op.kind in ("B", "W", "FB"):
                    events.append((op.end, -1))
            live = peak = 0
            for _, change in sorted(events):  # at a tie, free first
                live += change
                peak = max(peak, live)
            peaks.append(peak)
        return peaks


# ------------------------------------------------------------------------ the three orders


def order_1f1b(stages: int, micro: int) -> list[list[tuple]]:
    """Stage i: PP-1-i forwards, then (F, B) pairs, then the remaining backwards."""
    orders = []
    for i in range(stages):
        warm = min(stages - 1 - i, micro)
        order = [("F", 0)] * warm
        for _ in range(micro - warm):
            order += [("F", 0), ("B", 0)]
        orders.append(order + [("B", 0)] * warm)
    return orders


def order_zb1p(stages: int, micro: int) -> list[list[tuple]]:
    """ZB-H1, stage i: PP-1-i F; i (F, Bi); (F, Bi, W) while forwards remain; PP-1-i (Bi, W); i W.
    ("Bz", 0) is a backward whose W is queued for a later ("W",)."""
    if micro < stages:
        raise ValueError(f"ZB1P needs micro_batches >= stages ({stages}), got {micro}")
    orders = []
    for i in range(stages):
        order = [("F", 0)] * (stages - 1 - i) + [("F", 0), ("Bz", 0)] * i
        order += [("F", 0), ("Bz", 0), ("W",)] * (micro - stages + 1)
        order += [("Bz", 0), ("W",)] * (stages - 1 - i) + [("W",)] * i
        orders.append(order)
    return orders


def order_dualpipe(stages: int, micro: int) -> list[list[tuple]]:
    """The eight steps of DualPipe's `step()` for every rank. Phase 0 is the direction in which the
    rank sits in the first half of the pipeline, phase 1 the other; ("Bz", p) is a backward whose
    W is queued for a later ("W",); ("FB", p, q) is F of phase p overlapped with B of phase q."""
    if stages % 2 or micro % 2 or micro < 2 * stages:
        raise ValueError(
            f"DualPipe needs an even number of stages and micro_batches >= 2 * stages, "
            f"even; got stages={stages}, micro_batches={micro}"
        )
    half, orders = stages // 2, []
    for rank in range(stages):
        h = min(rank, stages - 1 - rank)
        middle = h == half - 1
        order = [("F", 0)] * ((half - h - 1) * 2)  # step 1: nF0
        order += [("F", 0), ("F", 1)] * (h + 1)  # step 2: nF0F1
        order += [("Bz", 1), ("W",), ("F", 1)] * (half - h - 1)  # step 3: nB1W1F1
        for i in range(micro // 2 - stages + h + 1):  # step 4 (main): nF0B1F1B0
            if i == 0 and middle:  # not overlapped, to shorten the bubble (dualpipe.py)
                order += [("F", 0), ("B", 1)]
            else:
                order += [("FB", 0, 1)]
            order += [("FB", 1, 0)]
        order += [("B", 1), ("FB", 1, 0)] * (half - h - 1)  # step 5: nB1F1B0
        zb = False  # step 6: nB1B0, the second half with W split off
        for i in range(h + 1):
            if i == (h + 1) // 2 and h % 2 == 1:
                zb = True
            order.append(("Bz" if zb else "B", 1))
            if i == (h + 1) // 2 and h % 2 == 0:
                zb = True
            order.append(("Bz" if zb else "B", 0))
        order += [("W",), ("Bz", 0)] * (half - h - 1)  # step 7: nWB0
        order += [("W",)] * (h + 1)  # step 8: nW
        orders.append(order)
    return orders


# ------------------------------------------------------------------------------ simulation


def _stage_of(schedule: str, stages: int, device: int, phase: int) -> tuple[int, int]:
    """(direction, stage) of a device's phase: direction 0 flows from device 0 down, 1 up."""
    if schedule != "dualpipe":
        return 0, device
    first_half = device < stages // 2
    direction = phase if first_half else 1 - phase
    return direction, device if direction == 0 else stages - 1 - device


def _device_of(schedule: str, stages: int, direction: int, stage: int) -> int:
    return stage if direction == 0 or schedule != "dualpipe" else stages - 1 - stage


def simulate(
    schedule: str,
    stages: int,
    micro_batches: int,
    times: Times = Times(),
    orders: list[list[tuple]] | None = None,
) -> Timeline:
    """Run a schedule: every operation starts when its device is free and its inputs have arrived.

    A forward of micro-batch j at stage s needs the forward of j at stage s-1 (plus `comm` when
    that ran on another device); a backward needs the backward at stage s+1 (or, at the last
    stage, the forward there). Within a device the order is the schedule's, or `orders` (one
    list per device, items as the `order_*` functions write them; "dualpipe" reads two directions).
    """
    check_choice("schedule", schedule, SCHEDULES)
    check_int("stages", stages, 2)
    check_int("micro_batches", micro_batches, 1)
    if orders is None:
        build = {"1f1b": order_1f1b, "zb1p": order_zb1p, "dualpipe": order_dualpipe}[schedule]
        orders = build(stages, micro_batches)
    elif len(orders) != stages:
        raise ValueError(f"orders must hold one list per device ({stages}), got {len(orders)}")
    per_direction = micro_batches // 2 if schedule == "dualpipe" else micro_batches
    t = times
    duration = {"F": t.F, "B": t.B, "Bi": t.B - t.W, "Bz": t.B - t.W, "W": t.W, "FB": t.overlapped}
    f_end: dict[tuple, float] = {}  # (direction, stage, micro) -> end of its forward
    b_end: dict[tuple, float] = {}  # (direction, stage, micro) -> end of its backward (input part)
    count = {}  # (device, kind, phase) -> how many of that kind the device has run
    queues = [deque() for _ in range(stages)]  # deferred W passes, first in first out
    done: list[list[Op]] = [[] for _ in range(stages)]
    free = [0.0] * stages
    nxt = [0] * stages

    def ready(device, kind, phase):  # (when the inputs are there, or None; the op's key)
        direction, stage = _stage_of(schedule, stages, device, phase)
        j = count.get((device, kind, phase), 0)
        key = (direction, stage, j)
        if kind == "F":
            if stage == 0:
                return 0.0, key
            prev = (direction, stage - 1, j)
        else:
            if stage == stages - 1:
                return f_end.get(key), key
            prev = (direction, stage + 1, j)
        store = f_end if kind == "F" else b_end
        if prev not in store:
            return None, key
        return store[prev] + t.comm, key

    progress = True
    while progress:
        progress = False
        for d in range(stages):
            while nxt[d] < len(orders[d]):
                item = orders[d][nxt[d]]
                kind = item[0]
                if kind == "W":
                    if not queues[d]:
                        raise RuntimeError(f"device {d}: a W with no deferred backward to finish")
                    direction, micro = queues[d][0]
                    start, parts = free[d], []
                elif kind == "FB":
                    (a, ka), (b, kb) = ready(d, "F", item[1]), ready(d, "B", item[2])
                    if a is None or b is None:
                        break
                    start, parts = max(free[d], a, b), [("F", item[1], ka), ("B", item[2], kb)]
                else:
                    phase = item[1]
                    a, key = ready(d, "F" if kind == "F" else "B", phase)
                    if a is None:
                        break
                    start, parts = max(free[d], a), [(kind, phase, key)]
                end = start + duration[kind]
                for part, phase, key in parts:
                    (f_end if part == "F" else b_end)[key] = end
                    name = "F" if part == "F" else "B"
                    count[(d, name, phase)] = count.get((d, name, phase), 0) + 1
                if kind == "W":
                    queues[d].popleft()
                    done[d].append(Op("W", direction, micro, start=start, end=end))
                elif kind == "FB":
                    (_, _, ka), (_, _, kb) = parts
                    done[d].append(Op("FB", ka[0], ka[2], kb[0], kb[2], start, end))
                else:
                    (_, _, key) = parts[0]
                    if kind == "Bz":
                        queues[d].append((key[0], key[2]))
                    done[d].append(Op(kind, key[0], key[2], start=start, end=end))
                free[d] = end
                nxt[d] += 1
                progress = True
    if any(nxt[d] < len(orders[d]) for d in range(stages)):
        raise RuntimeError(f"{schedule}: the schedule deadlocked (a dependency never ran)")
    # Kinds as the timeline reports them: a backward with its W split off is "Bi".
    ops = [
        [dataclasses.replace(o, kind="Bi" if o.kind == "Bz" else o.kind) for o in d] for d in done
    ]
    for d, device_ops in enumerate(ops):
        fs = sum(o.kind in ("F", "FB") for o in device_ops)
        if fs != (2 * per_direction if schedule == "dualpipe" else per_direction):
            raise RuntimeError(f"device {d} ran {fs} forwards")
    return Timeline(
        schedule=schedule,
        stages=stages,
        micro_batches=micro_batches,
        times=times,
        ops=ops,
        parameters=[len({o.direction for o in d} | {o.direction2 for o in d} - {-1}) for d in ops],
    )


def bubble_formula(schedule: str, stages: int, times: Times) -> float:
    """The bubble in DualPipe's table (V3 Table 2), for comparison with `simulate`'s."""
    check_choice("schedule", schedule, SCHEDULES)
    F, B, W = times.F, times.B, times.W
    if schedule == "1f1b":
        return (stages - 1) * (F + B)
    if schedule == "zb1p":
        return (stages - 1) * (F + B - 2 * W)
    return (stages / 2 - 1) * (times.overlapped + B - 3 * W)

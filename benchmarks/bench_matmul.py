"""How this machine's XLA spreads one matmul over its cores: the shapes minids' attention and MoE use.

    python benchmarks/bench_matmul.py            # a table (about half a minute on 2 CPU cores)
    python benchmarks/bench_matmul.py --quick    # fewer repeats
    python benchmarks/bench_matmul.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_matmul.py --json     # one JSON object on stdout, nothing else

Why it exists: bench_train.py divides the model's FLOP/s by a large square matmul's rate, and
bench_moe.py compares the experts' matmuls with a dense layer's. Both targets turn on how fast
XLA runs the small batched matmuls that attention and the routed experts are made of, and on
XLA:CPU that depends on how a matmul is spread over the cores. This script measures it.

What it measures: float32 matmuls (B, M, K) @ (B, K, N), each jitted alone, in GFLOP/s: the median
of calls run back to back (operands warm in cache, as a layer's are when the layer before has just
written them), the faster of two passes. Once in this process on every core it may use, once in a
child process pinned to one core (Linux; elsewhere the one-core figures are null). The shapes:

    attention_scores    64 x (128, 32) @ (32, 256)    `small`'s last causal block: 16 sequences x
                                                      4 kv heads; rows = 2 query heads x 64 queries;
                                                      the keys stored (256, 32), as attention has them
    attention_values    64 x (128, 256) @ (256, 32)   the same block's probabilities @ values
    experts_down        8 x (512, 128) @ (128, 128)   bench_moe.py's `tiny` experts: 512 slots each
    experts_gate_up     8 x (512, 128) @ (128, 256)   the same experts' gate and up projections
    experts_1024_rows   8 x (1024, 128) @ (128, 128)  twice the rows per expert
    dense_4096_rows     1 x (4096, 128) @ (128, 128)  experts_down's FLOPs as one 2-D matmul
    square_2048         1 x (2048, 2048) @ (2048, 2048)  bench_train.py's yardstick

and `independent_pair_ratio`: the time of one jitted program holding two independent
`experts_down` matmuls, divided by the time of one. 2.0 means XLA ran them one after the other;
1.0 would mean side by side.

JSON keys (`--json`):

    backend, jax_version, cpu_count          where it ran
    one_core_pinned                          true if the one-core figures were measured
    shapes: {name: {...}}                    one object per shape above, with
        batch, m, k, n                       the matmul (B, M, K) @ (B, K, N)
        gflops                               float32 GFLOP/s on every core, median
        gflops_one_core                      the same pinned to one core (null where not measured)
        core_speedup                         gflops / gflops_one_core (null likewise)
    independent_pair_ratio                   two independent experts_down in one program / one

Read `core_speedup`: near 1 means the matmul ran on one core however many there are; near the
number of cores means XLA split it. No target: this explains the other scripts' figures.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--pinned-child" in sys.argv:  # before JAX starts its threads
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import add_run_flags, log, median_ms, repeats  # noqa: E402

# name: (B, M, K, N)
SHAPES = {
    "attention_scores": (64, 128, 32, 256),
    "attention_values": (64, 128, 256, 32),
    "experts_down": (8, 512, 128, 128),
    "experts_gate_up": (8, 512, 128, 256),
    "experts_1024_rows": (8, 1024, 128, 128),
    "dense_4096_rows": (1, 4096, 128, 128),
    "square_2048": (1, 2048, 2048, 2048),
}


SMOKE_DIM = 64  # --smoke: every dimension of every shape at most this


TRANSPOSED_B = {"attention_scores"}  # (B, N, K): q @ k^T, with k as attention stores it


def _operands(shape, seed, transposed_b=False):
    B, M, K, N = shape
    ka, kb = jax.random.split(jax.random.key(seed))
    return jax.random.normal(ka, (B, M, K)), jax.random.normal(
        kb, (B, N, K) if transposed_b else (B, K, N)
    )


def measure(args: argparse.Namespace) -> dict:
    """GFLOP/s of every shape, and the independent-pair ratio, in this process."""
    shapes = SHAPES
    if args.smoke:
        shapes = {name: tuple(min(d, SMOKE_DIM) for d in shape) for name, shape in SHAPES.items()}
    matmul = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b))
    pair = jax.jit(
        lambda a, b, c, d: (jnp.einsum("bmk,bkn->bmn", a, b), jnp.einsum("bmk,bkn->bmn", c, d))
    )
    matmul_t = jax.jit(lambda a, b: jnp.einsum("bmk,bnk->bmn", a, b))
    calls = {}
    for i, (name, shape) in enumerate(shapes.items()):
        a, b = _operands(shape, i, name in TRANSPOSED_B)
        f = matmul_t if name in TRANSPOSED_B else matmul
        calls[name] = lambda a=a, b=b, f=f: f(a, b)
    c, d = _operands(shapes["experts_down"], 99)
    a, b = _operands(shapes["experts_down"], 2)
    calls["pair"] = lambda: pair(a, b, c, d)
    ms = {name: float("inf") for name in calls}
    n_repeats = repeats(args, full=40, quick=10)
    for _ in range(1 if args.smoke else 2):  # the faster median of two passes: load hits one only
        for name, call in calls.items():
            ms[name] = min(ms[name], median_ms(call, n_repeats, warm_up=not args.smoke))
    rows = {}
    for name, (B, M, K, N) in shapes.items():
        rows[name] = {
            "batch": B,
            "m": M,
            "k": K,
            "n": N,
            "gflops": 2 * B * M * K * N / ms[name] / 1e6,
        }
    return {"shapes": rows, "independent_pair_ratio": ms["pair"] / ms["experts_down"]}


def one_core(args: argparse.Namespace) -> dict | None:
    """The same measurement in a child process pinned to one core, or None where that can't be done."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None
    flags = [flag for flag in ("--quick", "--smoke") if getattr(args, flag[2:])]
    child = [sys.executable, __file__, "--pinned-child", "--json", *flags]
    run = subprocess.run(child, capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_flags(parser)
    parser.add_argument("--pinned-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    measured = measure(args)
    if args.pinned_child:
        print(json.dumps(measured))
        return measured
    log("the same, pinned to one core:")
    single = one_core(args)
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "one_core_pinned": single is not None,
        **measured,
    }
    for name, row in report["shapes"].items():
        row["gflops_one_core"] = single["shapes"][name]["gflops"] if single else None
        row["core_speedup"] = row["gflops"] / row["gflops_one_core"] if single else None
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['backend']}, jax {report['jax_version']}, {report['cpu_count']} cores; "
            "float32 GFLOP/s, medians"
        )
        print(
            f"{'':20s}{'(B, M, K, N)':>22s}{'every core':>12s}{'one core':>10s}{'every / one':>13s}"
        )
        for name, r in report["shapes"].items():
            one = "-" if r["gflops_one_core"] is None else f"{r['gflops_one_core']:.0f}"
            speedup = "-" if r["core_speedup"] is None else f"{r['core_speedup']:.2f}x"
            shape = f"({r['batch']}, {r['m']}, {r['k']}, {r['n']})"
            print(f"{name:20s}{shape:>22s}{r['gflops']:>12.0f}{one:>10s}{speedup:>13s}")
        print(
            f"two independent experts_down matmuls in one program take "
            f"{report['independent_pair_ratio']:.2f}x one"
        )
    return report


if __name__ == "__main__":
    main()

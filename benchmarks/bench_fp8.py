"""FP8-simulated training against fp32 and bf16 training, and quantisation throughput, in one process.

    python benchmarks/bench_fp8.py            # both presets, a readable table (~2 min on 2 cores)
    python benchmarks/bench_fp8.py --quick    # fewer repeats
    python benchmarks/bench_fp8.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_fp8.py --json     # one JSON object on stdout, nothing else

What it measures:

- Training: `minids.train.train_step` (jitted, AdamW) of the `tiny` (B 64 x T 24) and `small`
  (B 16 x T 256) presets in three precisions from `ModelConfig.with_precision`: "fp32", "bf16"
  (bfloat16 compute, float32 master weights) and "fp8" (V3's recipe, `minids.fp8.FP8Config()`:
  every attention and FFN linear an `Fp8Linear`, whose Fprop, Dgrad and Wgrad are simulated FP8
  GEMMs with 1x128 / 128x128 scaling and a 13-bit accumulator promoted every 128 elements). The
  compute dtype of "fp8" is float32 here (the preset's), so `fp8_ratio` is the cost of the
  simulation itself. Compilation and two warm-up steps are excluded; each figure is the median over
  repeats that run the three precisions in turn, so a slow moment of a shared machine hits all.
- Quantisation: `minids.fp8.quantize` of a 4096 x 4096 float32 matrix to E4M3, per 1x128 tile,
  per 128x128 block and per tensor, jitted; and `fp8_matmul` (quantise both operands, 13-bit
  accumulation) of 1024 x 1024 x 1024 against a plain float32 matmul of the same size.

JSON keys (`--json`):

    backend, jax_version, cpu_count            where it ran
    presets: {name: {...}}                     one object per preset, with
        batch, seq_len
        fp32_ms, bf16_ms, fp8_ms               median train_step, milliseconds
        fp8_ratio, bf16_ratio                  fp8_ms / fp32_ms, bf16_ms / fp32_ms
        fp8_over_bf16                          fp8_ms / bf16_ms
    quantize: {granularity: {...}}             "tile_1x128", "block_128x128", "tensor", with
        ms, gelem_per_s                        median time; input elements per second / 1e9
    matmul: {fp32_ms, fp8_ms, fp8_ratio}       1024^3 GEMM, plain vs simulated FP8

Target (a benchmark, never a test): the fp8-simulated step at most 3x the fp32 step on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import add_run_flags, log, median_ms, print_columns, repeats

from minids.config import preset
from minids.fp8 import fp8_matmul, quantize
from minids.model import Transformer
from minids.train import TrainConfig, make_optimizer, train_step

# name: (batch, timed repeats, steps per repeat); the sequence length is the preset's max_seq_len
TRAIN_SHAPES = {"tiny": (64, 8, 4), "small": (16, 4, 1)}
PRECISIONS = ("fp32", "bf16", "fp8")
QUANT_N, MATMUL_N = 4096, 1024
SMOKE_LAYERS, SMOKE_BATCH, SMOKE_N = 1, 8, 256  # --smoke: the model, its batch; the matrices' size


def bench_train(name: str, args: argparse.Namespace) -> dict:
    batch_size, full_repeats, steps = TRAIN_SHAPES[name]
    n_repeats = repeats(args, full_repeats, quick=max(2, full_repeats // 2))
    base = preset(name)
    if args.smoke:
        base = base.replace(n_layers=SMOKE_LAYERS)
        batch_size, steps = SMOKE_BATCH, 1
    seq_len = base.max_seq_len
    rng = np.random.default_rng(0)
    batch = {
        "inputs": jnp.asarray(rng.integers(3, base.vocab_size, (batch_size, seq_len)), jnp.int32),
        "targets": jnp.asarray(rng.integers(3, base.vocab_size, (batch_size, seq_len)), jnp.int32),
        "loss_mask": jnp.ones((batch_size, seq_len), jnp.float32),
    }
    runs = {}
    for precision in PRECISIONS:
        model = Transformer(base.with_precision(precision))
        optimizer = make_optimizer(model, TrainConfig())
        t0 = time.perf_counter()
        for _ in range(1 if args.smoke else 3):  # compile, then two warm-up steps (not in smoke)
            jax.block_until_ready(train_step(model, optimizer, batch))
        log(
            f"  {name}: {precision} train_step compiled and warm in {time.perf_counter() - t0:.1f} s"
        )
        runs[precision] = (model, optimizer)
    times = {p: [] for p in PRECISIONS}
    for _ in range(n_repeats):
        for precision, (model, optimizer) in runs.items():
            t = time.perf_counter()
            for _ in range(steps):
                metrics = train_step(model, optimizer, batch)
            jax.block_until_ready(metrics)
            times[precision].append((time.perf_counter() - t) / steps)
    ms = {p: 1e3 * float(np.median(t)) for p, t in times.items()}
    return {
        "batch": batch_size,
        "seq_len": seq_len,
        **{f"{p}_ms": ms[p] for p in PRECISIONS},
        "fp8_ratio": ms["fp8"] / ms["fp32"],
        "bf16_ratio": ms["bf16"] / ms["fp32"],
        "fp8_over_bf16": ms["fp8"] / ms["bf16"],
    }


def bench_quantize(args: argparse.Namespace, n: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    out = {}
    for label, block in (("tile_1x128", (1, 128)), ("block_128x128", (128, 128)), ("tensor", None)):
        fn = jax.jit(lambda x, block=block: quantize(x, "e4m3", block))
        ms = median_ms(lambda fn=fn: fn(x), repeats(args, full=10, quick=3), warm_up=not args.smoke)
        out[label] = {"ms": ms, "gelem_per_s": x.size / ms / 1e6}
    return out


def bench_matmul(args: argparse.Namespace, n: int) -> dict:
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    plain, fp8 = jax.jit(lambda a, b: a @ b), jax.jit(lambda a, b: fp8_matmul(a, b))
    n_repeats, warm_up = repeats(args, full=8, quick=3), not args.smoke
    fp32_ms = median_ms(lambda: plain(a, b), n_repeats, warm_up)
    fp8_ms = median_ms(lambda: fp8(a, b), n_repeats, warm_up)
    return {"fp32_ms": fp32_ms, "fp8_ms": fp8_ms, "fp8_ratio": fp8_ms / fp32_ms}


def print_table(report: dict, quant_n: int, matmul_n: int) -> None:
    print(
        f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs; "
        "one train_step, median over interleaved repeats"
    )
    rows = [
        ("training batch (B x T)", lambda r: f"{r['batch']} x {r['seq_len']}"),
        ("fp32 step", lambda r: f"{r['fp32_ms']:.1f} ms"),
        ("bf16 step", lambda r: f"{r['bf16_ms']:.1f} ms"),
        ("fp8-simulated step", lambda r: f"{r['fp8_ms']:.1f} ms"),
        ("fp8 / fp32", lambda r: f"{r['fp8_ratio']:.2f}x"),
        ("bf16 / fp32", lambda r: f"{r['bf16_ratio']:.2f}x"),
        ("fp8 / bf16", lambda r: f"{r['fp8_over_bf16']:.2f}x"),
    ]
    print_columns(report["presets"], rows, width=20)
    print(f"\nquantize {quant_n} x {quant_n} float32 -> E4M3 (jitted):")
    for label, r in report["quantize"].items():
        print(f"  {label:<16}{r['ms']:8.1f} ms  {r['gelem_per_s']:6.2f} G elements/s")
    m = report["matmul"]
    print(
        f"\n{matmul_n}^3 GEMM: float32 {m['fp32_ms']:.1f} ms, fp8_matmul (simulated) "
        f"{m['fp8_ms']:.1f} ms, ratio {m['fp8_ratio']:.2f}x"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=sorted(TRAIN_SHAPES),
        action="append",
        help="measure only this preset (repeatable; default: tiny and small)",
    )
    add_run_flags(parser)
    args = parser.parse_args(argv)
    quant_n, matmul_n = (SMOKE_N, SMOKE_N) if args.smoke else (QUANT_N, MATMUL_N)
    t0 = time.perf_counter()
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "presets": {},
    }
    for name in args.preset or (["tiny"] if args.smoke else list(TRAIN_SHAPES)):
        log(f"{name}:")
        report["presets"][name] = bench_train(name, args)
    log("quantize and GEMM:")
    report["quantize"] = bench_quantize(args, quant_n)
    report["matmul"] = bench_matmul(args, matmul_n)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report, quant_n, matmul_n)
    return report


if __name__ == "__main__":
    main()

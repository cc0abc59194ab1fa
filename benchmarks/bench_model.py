"""`tiny_v3` (DeepSeek-V3's architecture at toy size) against a dense model of equal activated FLOPs.

    python benchmarks/bench_model.py            # a table (about a minute on 2 CPU cores)
    python benchmarks/bench_model.py --quick    # fewer repeats
    python benchmarks/bench_model.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_model.py --json     # one JSON object on stdout, nothing else

What it measures: `minids.train.train_step` (jitted, AdamW) on a batch of 64 full-length sequences
(T = 24, the presets' max_seq_len) for

    tiny_v3   MLA (query compression, decoupled RoPE) + DeepSeekMoE (1 shared + 8 routed experts,
              2 per token, sigmoid group-limited routing, aux-free bias + sequence-wise loss),
              4 layers of width 64, the first one dense
    dense     the same width, depth and heads with standard attention (4 kv heads of 16) and a
              dense SwiGLU whose width makes its matmul weights per token equal tiny_v3's activated
              ones, so that both do (nearly) the same model FLOPs per token

Model FLOPs per token are `minids.cost.training_flops_per_token` (3 x the forward pass: 2 FLOPs per
activated matmul weight, plus causal attention at T = 24). The "peak" is this process's own best
2048 x 2048 float32 matmul rate (`bench_train.MatmulClock`), timed between the repeats. Compilation
and two warm-up steps are excluded; figures are medians over repeats that alternate the two models.

JSON keys (`--json`):

    backend, jax_version, cpu_count, matmul_gflops
    models: {name: {params, activated_params, flops_per_token, step_ms, train_tokens_per_s,
                    model_gflops, matmul_fraction}}
    v3_over_dense_step                         tiny_v3 step time / dense step time
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import add_run_flags, log, print_columns, repeats
from bench_train import MatmulClock

from minids.config import ModelConfig, preset
from minids.cost import matmul_params, param_counts, training_flops_per_token
from minids.model import Transformer
from minids.train import TrainConfig, make_optimizer, train_step

BATCH = 64
# --smoke: the batch, the matmul clock's size, and 2 layers (the dense one and one MoE layer)
SMOKE_BATCH, SMOKE_MATMUL_N, SMOKE_LAYERS = 8, 256, 2


def dense_twin(v3: ModelConfig | None = None) -> ModelConfig:
    """A dense model like `v3` (tiny_v3 by default) whose matmul weights per token match its
    activated ones."""
    v3 = v3 or preset("tiny_v3")
    base = preset(
        "tiny",
        d_model=v3.d_model,
        n_layers=v3.n_layers,
        n_heads=v3.n_heads,
        n_kv_heads=v3.n_heads,
        head_dim=16,
        max_seq_len=v3.max_seq_len,
    )
    per_unit = 3 * base.d_model * base.n_layers  # matmul weights per unit of FFN width
    width = round((matmul_params(v3) - matmul_params(base.replace(ffn_dim=1))) / per_unit) + 1
    return base.replace(ffn_dim=width)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_flags(parser)
    args = parser.parse_args(argv)
    n_repeats, steps = repeats(args, full=10, quick=4), 1 if args.smoke else 5
    B = SMOKE_BATCH if args.smoke else BATCH
    ticks = 1 if args.smoke else 2
    clock = MatmulClock(SMOKE_MATMUL_N) if args.smoke else MatmulClock()
    v3 = preset("tiny_v3", n_layers=SMOKE_LAYERS) if args.smoke else preset("tiny_v3")
    cfgs = {"tiny_v3": v3, "dense": dense_twin(v3)}
    rng = np.random.default_rng(0)
    T = cfgs["tiny_v3"].max_seq_len
    batch = {
        "inputs": jnp.asarray(rng.integers(3, 99, (B, T)), jnp.int32),
        "targets": jnp.asarray(rng.integers(3, 99, (B, T)), jnp.int32),
        "loss_mask": jnp.ones((B, T), jnp.float32),
    }
    runs = {}
    for name, cfg in cfgs.items():
        model = Transformer(cfg)
        optimizer = make_optimizer(model, TrainConfig())
        t0 = time.perf_counter()
        for _ in range(1 if args.smoke else 3):  # compile, then two warm-up steps (not in smoke)
            jax.block_until_ready(train_step(model, optimizer, batch))
        log(f"  {name}: compiled and warm in {time.perf_counter() - t0:.1f} s")
        runs[name] = (model, optimizer)
    times = {name: [] for name in runs}
    for _ in range(n_repeats):
        clock.tick(ticks)
        for name, (model, optimizer) in runs.items():
            t = time.perf_counter()
            for _ in range(steps):
                metrics = train_step(model, optimizer, batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - t) / steps)
    clock.tick(ticks)
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "matmul_gflops": clock.gflops,
        "models": {},
    }
    for name, cfg in cfgs.items():
        step = float(np.median(times[name]))
        fpt = training_flops_per_token(cfg, T)
        counts = param_counts(cfg)
        tokens_per_s = B * T / step
        report["models"][name] = {
            "params": counts.total,
            "activated_params": counts.activated,
            "flops_per_token": fpt,
            "step_ms": 1e3 * step,
            "train_tokens_per_s": tokens_per_s,
            "model_gflops": fpt * tokens_per_s / 1e9,
            "matmul_fraction": fpt * tokens_per_s / 1e9 / clock.gflops,
        }
    report["v3_over_dense_step"] = (
        report["models"]["tiny_v3"]["step_ms"] / report["models"]["dense"]["step_ms"]
    )
    if args.json:
        print(json.dumps(report))
        return report
    print(
        f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs; "
        f"train_step on {B} x {T} tokens; measured matmul rate {clock.gflops:.0f} GFLOP/s"
    )
    rows = [
        ("parameters, total", lambda r: f"{r['params']:,}"),
        ("parameters, activated", lambda r: f"{r['activated_params']:,}"),
        ("model FLOPs / token", lambda r: f"{r['flops_per_token'] / 1e6:.2f} M"),
        ("train_step", lambda r: f"{r['step_ms']:.1f} ms"),
        ("training tokens/s", lambda r: f"{r['train_tokens_per_s']:,.0f}"),
        ("model FLOP/s ÷ matmul rate", lambda r: f"{100 * r['matmul_fraction']:.1f}%"),
    ]
    print_columns(report["models"], rows, width=16)
    print(f"tiny_v3 step / dense step: {report['v3_over_dense_step']:.2f}x")
    return report


if __name__ == "__main__":
    main()

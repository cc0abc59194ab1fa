"""Training and generation speed of the `tiny` and `small` presets, measured in one process.

    python benchmarks/bench_train.py                  # both presets, a table (~1.5 min, 2 cores)
    python benchmarks/bench_train.py --preset small   # one preset
    python benchmarks/bench_train.py --quick          # fewer repeats (~45 s)
    python benchmarks/bench_train.py --smoke          # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_train.py --json           # one JSON object on stdout, nothing else

What it measures, for each preset:

- Training: `minids.train.train_step` (jitted, AdamW from `make_optimizer`) on a realistic batch
  of full-length sequences, T = the preset's max_seq_len: tiny B=64 (T=24 at present), small
  B=16 x T=256. Compilation and two warm-up steps are excluded; the figure is the median over
  timed repeats, each ended by `jax.block_until_ready`.
- Model FLOP/s as a fraction of this process's own dense matmul rate: the "peak" is the best of
  several jitted 2048 x 2048 float32 matmuls (2 * 2048^3 FLOPs each), timed between the training
  repeats so that both see the same machine (other processes on a shared machine slow both).
- Generation: `minids.generate.generate` (KV cache, one token per step) against
  `generate_recompute` (the whole sequence re-run for every token), greedy, 128 new tokens for the
  same batch of 8 prompts of 8 tokens, EOS disabled so both produce all 128. Compilation excluded.
  For `tiny` the 136-token sequences run past its max_seq_len; RoPE has no length limit, and it is
  the speed that is measured here.

Model FLOPs per trained token (the accounting of PaLM's MFU, Chowdhery et al. 2022, app. B):

    flops_per_token = 6 * P_matmul + 12 * L * T * N * H

- P_matmul: the weights of every matmul, output head included:
  L * (D*N*H [wq] + 2*D*M*H [wk, wv] + N*H*D [wo] + 3*D*F [SwiGLU]) + D*V [head]. The embedding
  lookup (a gather) and the RMSNorm gains do no matmul and are left out. 6 = 2 FLOPs per
  multiply-add x (forward + backward for the activations + backward for the weights).
- Attention: QK^T and AV are 2 * 2 * T * N * H FLOPs per token per layer forward, x3 with the
  backward pass. We count the full T x T score matrix, as PaLM does, although causal masking makes
  about half of it unnecessary (minids computes 5/8 of it at T=256; see
  `minids.kernels.attention.blockwise_causal_attention`). Attention is 14% of the counted FLOPs of `small`.

JSON keys (`--json`):

    backend, jax_version, cpu_count    where it ran
    matmul_gflops                      the measured dense float32 matmul rate (the "peak"), GFLOP/s
    presets: {name: {...}}             one object per preset, with
        batch, seq_len                 the training batch
        params, matmul_params          all trainable parameters; P_matmul above
        flops_per_token                model FLOPs per trained token, formula above
        step_ms, step_ms_min           median and fastest train_step, milliseconds
        train_tokens_per_s             batch * seq_len / median step time
        model_gflops                   flops_per_token * train_tokens_per_s / 1e9
        matmul_fraction                model_gflops / matmul_gflops
        matmul_fraction_paired         the same, each repeat against the matmul rate timed just
                                       before and after it (median): steadier on a busy machine
        gen_batch, gen_prompt_len, gen_new_tokens
        cached_tokens_per_s            new tokens per second with the KV cache (median)
        recompute_tokens_per_s         new tokens per second without it (median)
        cache_speedup                  cached_tokens_per_s / recompute_tokens_per_s

Targets (benchmarks, never tests): `small` reaches >= 60% of the measured matmul rate on CPU;
cached generation is >= 10x faster than recomputing.
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
from flax import nnx

from minids.config import preset
from minids.cost import matmul_params  # P_matmul of the module docstring, checked against the model
from minids.generate import generate, generate_recompute
from minids.model import Transformer, count_params
from minids.train import TrainConfig, make_optimizer, train_step

# name: (batch, timed repeats, steps per repeat); the sequence length is the preset's max_seq_len
TRAIN_SHAPES = {"tiny": (64, 10, 5), "small": (16, 8, 1)}
GEN_BATCH, GEN_PROMPT_LEN, GEN_NEW_TOKENS = 8, 8, 128
MATMUL_N = 2048
# --smoke: the training batch, the generation (batch, prompt length, new tokens), the matmul size
SMOKE_BATCH, SMOKE_GEN, SMOKE_MATMUL_N = 8, (2, 8, 8), 256


def _linear_weights(model: Transformer) -> int:
    n = sum(m.kernel[...].size for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Linear))
    return n + (model.cfg.d_model * model.cfg.vocab_size if model.cfg.tie_embeddings else 0)


def flops_per_token(cfg, seq_len: int) -> int:
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim


class MatmulClock:
    """The dense matmul rate of this process: best of every timing taken during the run."""

    def __init__(self, n: int = MATMUL_N):
        self.n = n
        self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.fn = jax.jit(lambda a: a @ a)
        jax.block_until_ready(self.fn(self.a))
        self.best = float("inf")

    def tick(self, times: int = 1) -> float:
        """Time `times` matmuls; returns the best of them in GFLOP/s (and keeps the run's best)."""
        best = float("inf")
        for _ in range(times):
            t = time.perf_counter()
            jax.block_until_ready(self.fn(self.a))
            best = min(best, time.perf_counter() - t)
        self.best = min(self.best, best)
        return 2 * self.n**3 / best / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.n**3 / self.best / 1e9


def bench_train(name: str, clock: MatmulClock, args: argparse.Namespace) -> dict:
    batch_size, full_repeats, steps = TRAIN_SHAPES[name]
    n_repeats = repeats(args, full_repeats, quick=max(3, full_repeats // 2))
    if args.smoke:
        batch_size, steps = SMOKE_BATCH, 1
    cfg = preset(name)
    seq_len = cfg.max_seq_len
    model = Transformer(cfg)
    assert _linear_weights(model) == matmul_params(cfg), "the FLOP formula no longer fits the model"
    optimizer = make_optimizer(model, TrainConfig())
    rng = np.random.default_rng(0)
    batch = {
        "inputs": jnp.asarray(rng.integers(3, cfg.vocab_size, (batch_size, seq_len)), jnp.int32),
        "targets": jnp.asarray(rng.integers(3, cfg.vocab_size, (batch_size, seq_len)), jnp.int32),
        "loss_mask": jnp.ones((batch_size, seq_len), jnp.float32),
    }
    t0 = time.perf_counter()
    for _ in range(1 if args.smoke else 3):  # compile, then two warm-up steps (not in smoke)
        jax.block_until_ready(train_step(model, optimizer, batch))
    log(f"  {name}: train_step compiled and warm in {time.perf_counter() - t0:.1f} s")
    fpt = flops_per_token(cfg, seq_len)
    times, paired = [], []
    ticks = 1 if args.smoke else 2
    for _ in range(n_repeats):
        before = clock.tick(ticks)
        t = time.perf_counter()
        for _ in range(steps):
            metrics = train_step(model, optimizer, batch)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t) / steps)
        around = max(before, clock.tick(ticks))  # the matmul rate right around this repeat
        paired.append(fpt * batch_size * seq_len / times[-1] / 1e9 / around)
    step = float(np.median(times))
    tokens_per_s = batch_size * seq_len / step
    model_gflops = fpt * tokens_per_s / 1e9
    return {
        "batch": batch_size,
        "seq_len": seq_len,
        "params": count_params(model),
        "matmul_params": matmul_params(cfg),
        "flops_per_token": fpt,
        "step_ms": 1e3 * step,
        "step_ms_min": 1e3 * min(times),
        "train_tokens_per_s": tokens_per_s,
        "model_gflops": model_gflops,
        "matmul_fraction_paired": float(np.median(paired)),
    }


def bench_generate(name: str, args: argparse.Namespace) -> dict:
    batch, prompt_len, new_tokens = (
        SMOKE_GEN if args.smoke else (GEN_BATCH, GEN_PROMPT_LEN, GEN_NEW_TOKENS)
    )
    model = Transformer(preset(name))
    rng = np.random.default_rng(1)
    prompts = [
        list(map(int, rng.integers(3, model.cfg.vocab_size, prompt_len))) for _ in range(batch)
    ]
    kwargs = dict(max_new_tokens=new_tokens, eos_id=-1)  # no EOS: every sequence runs to the end
    result = {"gen_batch": batch, "gen_prompt_len": prompt_len, "gen_new_tokens": new_tokens}
    outputs = {}
    for label, fn, n_repeats in (
        ("cached", generate, repeats(args, full=5, quick=3)),
        ("recompute", generate_recompute, repeats(args, full=2, quick=1)),
    ):
        t0 = time.perf_counter()
        fn(model, prompts, **kwargs)  # compile + one run
        log(
            f"  {name}: {label} generation compiled and run once in {time.perf_counter() - t0:.1f} s"
        )
        times = []
        for _ in range(n_repeats):
            t = time.perf_counter()
            outputs[label] = fn(model, prompts, **kwargs).tokens
            times.append(time.perf_counter() - t)
        result[f"{label}_tokens_per_s"] = batch * new_tokens / float(np.median(times))
    if not np.array_equal(outputs["cached"], outputs["recompute"]):
        log(
            f"  {name}: WARNING cached and recomputed greedy tokens differ "
            f"({np.mean(outputs['cached'] != outputs['recompute']):.1%} of them)"
        )
    result["cache_speedup"] = result["cached_tokens_per_s"] / result["recompute_tokens_per_s"]
    return result


def print_table(report: dict, matmul_n: int) -> None:
    print(
        f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs; "
        f"dense float32 matmul ({matmul_n}^2, best of run): {report['matmul_gflops']:.0f} GFLOP/s"
    )
    rows = [
        ("training batch (B x T)", lambda r: f"{r['batch']} x {r['seq_len']}"),
        (
            "parameters (matmul)",
            lambda r: f"{r['params'] / 1e6:.2f}M ({r['matmul_params'] / 1e6:.2f}M)",
        ),
        ("model FLOPs / token", lambda r: f"{r['flops_per_token'] / 1e6:.2f}M"),
        ("train step, median (min)", lambda r: f"{r['step_ms']:.1f} ({r['step_ms_min']:.1f}) ms"),
        ("training tokens / s", lambda r: f"{r['train_tokens_per_s']:,.0f}"),
        ("model GFLOP/s", lambda r: f"{r['model_gflops']:.1f}"),
        ("fraction of matmul rate", lambda r: f"{r['matmul_fraction']:.1%}"),
        ("  (paired with each repeat)", lambda r: f"{r['matmul_fraction_paired']:.1%}"),
        ("generation B x new tokens", lambda r: f"{r['gen_batch']} x {r['gen_new_tokens']}"),
        ("cached, tokens / s", lambda r: f"{r['cached_tokens_per_s']:,.0f}"),
        ("recompute, tokens / s", lambda r: f"{r['recompute_tokens_per_s']:,.0f}"),
        ("cached / recompute", lambda r: f"{r['cache_speedup']:.1f}x"),
    ]
    print_columns(report["presets"], rows, width=22)


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
    names = args.preset or (["tiny"] if args.smoke else list(TRAIN_SHAPES))

    t0 = time.perf_counter()
    clock = MatmulClock(SMOKE_MATMUL_N if args.smoke else MATMUL_N)
    clock.tick(1 if args.smoke else 5)
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "presets": {},
    }
    for name in names:
        log(f"{name}:")
        report["presets"][name] = {
            **bench_train(name, clock, args),
            **bench_generate(name, args),
        }
    report["matmul_gflops"] = clock.gflops
    for r in report["presets"].values():
        r["matmul_fraction"] = r["model_gflops"] / clock.gflops
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report, clock.n)
    return report


if __name__ == "__main__":
    main()

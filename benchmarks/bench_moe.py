"""One MoE layer against a dense SwiGLU layer that does the same activated FLOPs, in one process.

    python benchmarks/bench_moe.py            # both sizes, a readable table (about a minute on CPU)
    python benchmarks/bench_moe.py --quick    # fewer repeats
    python benchmarks/bench_moe.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_moe.py --json     # one JSON object on stdout, nothing else

What it measures, for each size: the forward and backward pass of `minids.moe.MoE` (gradients
with respect to the input and every weight, of a squared error of the output, so that the whole
forward pass is needed, as in a model), with the fast dispatch (each expert on its own tokens, in
fixed-size blocks) and with the reference dispatch (every expert on every token), divided by the
same for a `minids.layers.SwiGLU` of width (K + N_s) * F. A token then does the same FFN matmul
FLOPs in both: K routed experts and N_s shared experts of width F against one FFN of width
(K + N_s) * F. The MoE also runs its router (E * D multiply-adds per token, about
1/(3 (K + N_s) F / E) of the FFN's) and moves rows to and from the experts' blocks. Weights come
from each module's initialiser; the router is untrained, so the load is what a random router gives
(its MaxVio is reported).

Each figure is the median over repeats that time two layers in turn, so that a slow moment of a
shared machine hits both: dense and fast, then (fewer repeats) dense and reference, so that each
call always follows the same other call (what ran just before moves a call's time by a few
percent). `reference_ms` is scaled to the first pair's dense time. Compilation and a warm-up call
are excluded.

Sizes: `tiny` is the MoE version of the `tiny` preset's FFN (D 128, dense width 384), 64 sequences
of 32 tokens; `small` that of the `small` preset (D 256, dense width 768), 16 sequences of 256.

JSON keys (`--json`):

    backend, jax_version, cpu_count            where it ran
    sizes: {name: {...}}                       one object per size, with
        tokens, d_model                        B * T tokens per call, D
        n_routed_experts, experts_per_token, n_shared_experts, expert_ffn_dim, dense_ffn_dim
        max_vio                                MaxVio of the untrained router on this batch
        dense_ms, fast_ms, reference_ms        median forward + backward time, milliseconds
        fast_ratio, reference_ratio            fast_ms / dense_ms, reference_ms / dense_ms

Target (a benchmark, never a test): the fast path at most 1.5x the dense layer on CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
from _common import add_run_flags, interleaved_ms, log, print_columns, repeats
from flax import nnx

from minids.config import preset
from minids.layers import SwiGLU
from minids.moe import MoE, MoEConfig

# name: (preset, batch, seq_len, MoEConfig fields, timed repeats)
SIZES = {
    "tiny": (
        "tiny",
        64,
        32,
        dict(n_routed_experts=8, experts_per_token=2, n_shared_experts=1, expert_ffn_dim=128),
        60,
    ),
    "small": (
        "small",
        16,
        256,
        dict(n_routed_experts=16, experts_per_token=2, n_shared_experts=1, expert_ffn_dim=256),
        10,
    ),
}
SMOKE_BATCH, SMOKE_SEQ_LEN = 8, 16


def forward_backward(module: nnx.Module, x: jax.Array):
    """A jitted function of (weights, x) returning the gradients of a squared error of the output.

    The loss must need the output's value, as the next layer of a model does: the gradient of a
    linear probe, sum(y * probe), does not, and XLA then drops the last matmul of the forward pass.
    """
    graphdef, state = nnx.split(module)
    target = jax.random.normal(jax.random.key(1), x.shape, x.dtype)

    def loss(state, x):
        out = nnx.merge(graphdef, state)(x)
        y = out[0] if isinstance(out, tuple) else out
        return 0.5 * jnp.sum((y - target) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: grad(state, x)


def bench_size(name: str, args: argparse.Namespace) -> dict:
    preset_name, batch, seq_len, fields, full_repeats = SIZES[name]
    n_repeats = repeats(args, full_repeats, quick=max(3, full_repeats // 3))
    n_repeats_ref = 1 if args.smoke else max(3, n_repeats // 3)
    if args.smoke:
        batch, seq_len = SMOKE_BATCH, SMOKE_SEQ_LEN
    moe_cfg = MoEConfig(**fields)
    cfg = preset(preset_name, moe=moe_cfg)
    dense_width = (moe_cfg.experts_per_token + moe_cfg.n_shared_experts) * moe_cfg.expert_ffn_dim
    x = jax.random.normal(jax.random.key(0), (batch, seq_len, cfg.d_model), jnp.float32)
    layers = {
        "dense": SwiGLU(cfg, ffn_dim=dense_width, rngs=nnx.Rngs(0)),
        "fast": MoE(cfg, rngs=nnx.Rngs(0)),
        "reference": MoE(
            dataclasses.replace(cfg, moe=dataclasses.replace(moe_cfg, dispatch="reference")),
            rngs=nnx.Rngs(0),
        ),
    }
    max_vio = float(layers["fast"](x)[1]["max_vio"])
    calls = {label: forward_backward(layer, x) for label, layer in layers.items()}
    # Two pairs, each call timed right after the other of its pair: what ran just before a call
    # moves its time by several percent (an MoE layer after the reference dispatch, which sweeps
    # E times the memory, ran 4-6% slower at `tiny` than after the dense layer).
    warm_up = not args.smoke
    ms = interleaved_ms(
        {k: calls[k] for k in ("dense", "fast")}, n_repeats, label=f"{name}: ", warm_up=warm_up
    )
    ms_ref = interleaved_ms(
        {k: calls[k] for k in ("dense", "reference")},
        n_repeats_ref,
        label=f"{name}: ",
        warm_up=warm_up,
    )
    ms["reference"] = ms_ref["reference"] * ms["dense"] / ms_ref["dense"]
    return {
        "tokens": batch * seq_len,
        "d_model": cfg.d_model,
        **fields,
        "dense_ffn_dim": dense_width,
        "max_vio": max_vio,
        "dense_ms": ms["dense"],
        "fast_ms": ms["fast"],
        "reference_ms": ms["reference"],
        "fast_ratio": ms["fast"] / ms["dense"],
        "reference_ratio": ms["reference"] / ms["dense"],
    }


def print_table(report: dict) -> None:
    print(
        f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs; "
        "forward + backward of one layer, median over interleaved repeats"
    )
    rows = [
        ("tokens per call", lambda r: f"{r['tokens']}"),
        (
            "E routed / K / shared, F",
            lambda r: (
                f"{r['n_routed_experts']} / {r['experts_per_token']} / "
                f"{r['n_shared_experts']}, {r['expert_ffn_dim']}"
            ),
        ),
        ("dense SwiGLU width", lambda r: f"{r['dense_ffn_dim']}"),
        ("router MaxVio (untrained)", lambda r: f"{r['max_vio']:.2f}"),
        ("dense SwiGLU", lambda r: f"{r['dense_ms']:.1f} ms"),
        ("MoE, fast dispatch", lambda r: f"{r['fast_ms']:.1f} ms"),
        ("MoE, reference dispatch", lambda r: f"{r['reference_ms']:.1f} ms"),
        ("fast / dense", lambda r: f"{r['fast_ratio']:.2f}x"),
        ("reference / dense", lambda r: f"{r['reference_ratio']:.2f}x"),
    ]
    print_columns(report["sizes"], rows, width=20)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        action="append",
        help="measure only this size (repeatable; default: tiny and small)",
    )
    add_run_flags(parser)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "sizes": {},
    }
    for name in args.size or (["tiny"] if args.smoke else list(SIZES)):
        log(f"{name}:")
        report["sizes"][name] = bench_size(name, args)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()

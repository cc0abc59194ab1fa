"""Decoding one token with MHA, naive MLA and absorbed MLA at growing context, in one process.

    python benchmarks/bench_mla.py            # a readable table (a minute or two on CPU)
    python benchmarks/bench_mla.py --quick    # fewer repeats
    python benchmarks/bench_mla.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_mla.py --json     # one JSON object on stdout, nothing else

What it measures: the wall time of one jitted `Transformer.forward_cached` call that decodes one new
token for each of B sequences against a cache holding `context` earlier tokens: every layer's
attention, feed-forward and the output head, as in generation. Models are the `small` preset's width
(D 256, 6 layers, 8 query heads of 32) with

    mha           8 key/value heads of 32: caches 2 * 8 * 32 = 512 numbers per token per layer
    gqa           the `small` preset itself, 4 key/value heads: 256
    mla_naive     MLA (C 64, R 16, Hn 32, Hv 32, q_lora_rank 96): caches 64 + 16 = 80, and rebuilds
                  every cached token's keys and values each step
    mla_absorbed  the same weights, attending in latent space (W_UK and W_UV folded in)

The cache buffer has exactly `context + 1` slots and the key mask marks them all as filled (the
buffers hold zeros: the work done does not depend on their values). Each figure is the median over
repeats that time the models in turn, in a new (seeded) order each round, so that a slow moment of a
shared machine hits them all and no model always runs right after the same other one; compiling
and a warm-up call are excluded.

JSON keys (`--json`):

    backend, jax_version, cpu_count, batch
    cache_bytes_per_token: {model: ...}      bytes, all layers, float32 (minids.mla.kv_cache_bytes_per_token)
    mha_over_mla_cache                       how many times smaller MLA's cache is than MHA's
    contexts: {context: {...}}               one object per context ("256", ...), with
        mha, gqa, mla_naive, mla_absorbed    median per-token decode time, milliseconds
        naive_over_absorbed                  mla_naive / mla_absorbed

Targets (a benchmark, never a test): absorbed MLA decodes faster than naive MLA from context 1024 on,
and MLA's cache is at least 4x smaller than MHA's at this width.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
from _common import add_run_flags, interleaved_ms, log, print_columns, repeats
from flax import nnx

from minids.config import preset
from minids.mla import MLAConfig, kv_cache_bytes_per_token
from minids.model import KVCache, Transformer

CONTEXTS = (256, 1024, 4096)
SMOKE_CONTEXTS = (32,)
BATCH = 4
MLA = MLAConfig(
    q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32
)


def configs(contexts=CONTEXTS):
    small = preset("small", max_seq_len=max(contexts) + 1)
    return {
        "mha": small.replace(n_kv_heads=small.n_heads),
        "gqa": small,
        "mla_naive": small.replace(mla=MLA.replace(decode="naive")),
        "mla_absorbed": small.replace(mla=MLA.replace(decode="absorbed")),
    }


@nnx.jit
def decode_one(model, tokens, positions, cache):
    return model.forward_cached(tokens, positions, cache)


def full_cache(model: Transformer, context: int) -> KVCache:
    """A cache with `context` filled slots and one free slot for the new token."""
    cache = model.init_cache(BATCH, context + 1)
    return KVCache(
        layers=cache.layers,
        key_mask=jnp.ones_like(cache.key_mask),
        index=jnp.asarray(context, jnp.int32),
    )


def bench_context(models: dict, context: int, repeats: int, warm_up: bool = True) -> dict:
    tokens = jnp.full((BATCH, 1), 5, jnp.int32)
    positions = jnp.full((BATCH, 1), context, jnp.int32)
    calls = {}
    for name, model in models.items():
        cache = full_cache(model, context)
        calls[name] = lambda model=model, cache=cache: decode_one(model, tokens, positions, cache)
    row = interleaved_ms(calls, repeats, label=f"context {context}: ", warm_up=warm_up)
    row["naive_over_absorbed"] = row["mla_naive"] / row["mla_absorbed"]
    return row


def print_table(report: dict) -> None:
    print(
        f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs; "
        f"one decode step for {report['batch']} sequences, median over interleaved repeats"
    )
    cache = report["cache_bytes_per_token"]
    print(f"{'':28s}" + "".join(f"{name:>14s}" for name in cache))
    print(f"{'cache bytes / token':28s}" + "".join(f"{b:>14,d}" for b in cache.values()))
    print(f"MHA cache / MLA cache: {report['mha_over_mla_cache']:.1f}x\n")
    columns = {f"context {c}": row for c, row in report["contexts"].items()}
    rows = [(name, lambda r, name=name: f"{r[name]:.2f} ms") for name in cache]
    rows.append(("naive / absorbed MLA", lambda r: f"{r['naive_over_absorbed']:.2f}x"))
    print_columns(columns, rows, width=16)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_flags(parser)
    args = parser.parse_args(argv)
    contexts = SMOKE_CONTEXTS if args.smoke else CONTEXTS
    t0 = time.perf_counter()
    cfgs = configs(contexts)
    models = {name: Transformer(cfg, rngs=nnx.Rngs(0)) for name, cfg in cfgs.items()}
    cache_bytes = {name: kv_cache_bytes_per_token(cfg) for name, cfg in cfgs.items()}
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "batch": BATCH,
        "cache_bytes_per_token": cache_bytes,
        "mha_over_mla_cache": cache_bytes["mha"] / cache_bytes["mla_absorbed"],
        "contexts": {},
    }
    for context in contexts:
        report["contexts"][str(context)] = bench_context(
            models, context, repeats(args, full=15, quick=5), warm_up=not args.smoke
        )
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()

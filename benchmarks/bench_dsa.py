"""DeepSeek Sparse Attention against dense absorbed MLA: decode and prefill time as context grows.

    python benchmarks/bench_dsa.py            # a readable table (several minutes on 2 CPU cores)
    python benchmarks/bench_dsa.py --quick    # fewer repeats, contexts 1K, 4K and 16K
    python benchmarks/bench_dsa.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_dsa.py --json     # one JSON object on stdout, nothing else

The model: 2 layers of MLA at V3.2's proportions, scaled down (D 256, 16 heads, C 128, R 32,
Hn = Hv = 32, q_lora_rank 128), with a lightning indexer of 4 heads of 64 and top-k 1,024 (V3.2:
64 heads of 128, top-k 2,048), dense SwiGLU feed-forward layers. One set of weights serves both
sides: `stage="dense"` is plain MLA decoding in latent space (absorbed), `stage="sparse"` is DSA.

    decode     one `forward_cached` step for one sequence against a cache of `context` filled slots,
               every layer and the head included, timed as 8 steps in one compiled loop / 8 (the
               cache a loop carry, written in place, as in generation). Dense absorbed MLA reads all `context` latents;
               DSA scores them all with the indexer, keeps 1,024 and attends to those.
    indexer    the indexer alone for that step, in every layer: its projections, its scores over the
               cache and the top-k (what DSA adds to a step).
    prefill    one jitted full forward pass over `context` tokens (no cache): dense runs the causal
               attention kernel (minids.kernels.attention); DSA gathers k latents for every query, so
               it holds T·k·(C + R) numbers per layer (1.3 GB at 2K), and is measured up to 2K only.

Each figure is the median over repeats that time the two sides in turn; compiling and one warm-up
call are excluded.

JSON keys (`--json`):

    backend, jax_version, cpu_count, topk, layers
    decode: {context: {...}}              one object per context ("1024", ...), with
        dense_ms, dsa_ms                  median per-token decode time, milliseconds
        dense_over_dsa                    how many times faster DSA decodes
        indexer_ms                        the indexer's part of a DSA step, milliseconds
        indexer_share                     indexer_ms / dsa_ms
    prefill: {context: {...}}             one object per prefill context, with
        dense_ms, dsa_ms                  median prefill time, milliseconds
        dense_over_dsa                    dense_ms / dsa_ms

Target (a benchmark, never a test): at 16K context with top-k 1,024 a DSA decode step is at least
4x faster than dense absorbed MLA, and the ratio grows with context.
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

from minids import dsa
from minids.attention import attention_mask
from minids.config import DSAConfig, MLAConfig, ModelConfig
from minids.model import KVCache, Transformer

CONTEXTS = (1024, 2048, 4096, 8192, 16384)
QUICK_CONTEXTS = (1024, 4096, 16384)
PREFILL_CONTEXTS = (1024, 2048)
SMOKE_CONTEXTS, SMOKE_TOPK = (64,), 16
TOPK = 1024


def config(max_len: int, topk: int, smoke: bool = False) -> ModelConfig:
    if smoke:  # one small layer: the code paths and the keys, in seconds
        return ModelConfig(
            vocab_size=128,
            d_model=32,
            n_layers=1,
            n_heads=2,
            n_kv_heads=2,
            ffn_dim=64,
            max_seq_len=max_len,
            mla=MLAConfig(
                q_lora_rank=16,
                kv_lora_rank=16,
                qk_nope_head_dim=8,
                qk_rope_head_dim=8,
                v_head_dim=8,
                dsa=DSAConfig(index_n_heads=2, index_head_dim=8, index_topk=topk),
            ),
        )
    return ModelConfig(
        vocab_size=128,
        d_model=256,
        n_layers=2,
        n_heads=16,
        n_kv_heads=16,
        ffn_dim=768,
        max_seq_len=max_len,
        mla=MLAConfig(
            q_lora_rank=128,
            kv_lora_rank=128,
            qk_nope_head_dim=32,
            qk_rope_head_dim=32,
            v_head_dim=32,
            dsa=DSAConfig(index_n_heads=4, index_head_dim=64, index_topk=topk),
        ),
    )


STEPS = 8  # decode steps per timed call, in one compiled loop, as generation runs them


@nnx.jit
def decode_steps(model, tokens, positions, cache):
    """STEPS decode steps into the same cache slot, in a `fori_loop` as `minids.generate` runs them:
    the cache is a loop carry, so each step writes one slot in place instead of copying the cache."""
    start = cache.index

    def step(_, carry):
        cache, total = carry
        logits, cache = model.forward_cached(tokens, positions, cache)
        return KVCache(layers=cache.layers, key_mask=cache.key_mask, index=start), total + logits[
            0, 0, 0
        ]

    return jax.lax.fori_loop(0, STEPS, step, (cache, jnp.zeros(())))[1]


@nnx.jit
def prefill(model, tokens):
    return model(tokens)


@nnx.jit
def indexer_only(model, x, positions, caches):
    """What the indexer adds to one decode step in every layer (projections, scores, top-k), timed
    like `decode_steps`: STEPS times in one compiled loop."""

    def step(i, total):
        for block, cache in zip(model.blocks, caches, strict=True):
            attn = block.attn
            tokens = x.reshape(-1, x.shape[-1]) + i  # a new input each step: nothing is hoisted
            q, w, _ = attn.indexer(tokens, attn.q_norm(attn.wq_a(tokens)), positions)
            keys = cache["index_k"]  # scored as they are: writing a slot here would copy them all
            S = keys.shape[1]
            scores = dsa.index_scores(q, w, keys, attention_mask(1, S, S - 1))
            total = total + jnp.sum(
                dsa.select_topk(scores, attention_mask(1, S, S - 1), attn.topk)[0]
            )
        return total

    return jax.lax.fori_loop(0, STEPS, step, jnp.zeros((), jnp.int32))


def full_cache(model: Transformer, context: int) -> KVCache:
    """A cache with `context` filled slots (random latents) and one free slot for the new token."""
    cache = model.init_cache(1, context + 1)
    key = jax.random.key(0)
    layers = tuple(
        {
            name: jax.random.normal(jax.random.fold_in(key, i), a.shape, a.dtype)
            for name, a in layer.items()
        }
        for i, layer in enumerate(cache.layers)
    )
    return KVCache(
        layers=layers, key_mask=jnp.ones_like(cache.key_mask), index=jnp.asarray(context, jnp.int32)
    )


def bench_decode(model: Transformer, context: int, n: int, warm_up: bool) -> dict:
    tokens = jnp.full((1, 1), 5, jnp.int32)
    positions = jnp.full((1, 1), context, jnp.int32)
    cache = full_cache(model, context)
    dense_model, sparse_model = nnx.clone(model), model
    dsa.set_stage(dense_model, "dense")
    dsa.set_stage(sparse_model, "sparse")
    x = jax.random.normal(jax.random.key(1), (1, 1, model.cfg.d_model))
    calls = {
        "dense": lambda: decode_steps(dense_model, tokens, positions, cache),
        "dsa": lambda: decode_steps(sparse_model, tokens, positions, cache),
        "indexer": lambda: indexer_only(sparse_model, x, positions, cache.layers),
    }
    ms = interleaved_ms(calls, n, label=f"decode {context}: ", warm_up=warm_up)
    dense_ms, dsa_ms = ms["dense"] / STEPS, ms["dsa"] / STEPS
    return {
        "dense_ms": dense_ms,
        "dsa_ms": dsa_ms,
        "dense_over_dsa": dense_ms / dsa_ms,
        "indexer_ms": ms["indexer"] / STEPS,
        "indexer_share": ms["indexer"] / STEPS / dsa_ms,
    }


def bench_prefill(model: Transformer, context: int, n: int, warm_up: bool) -> dict:
    tokens = jax.random.randint(jax.random.key(2), (1, context), 3, 100)
    dense_model, sparse_model = nnx.clone(model), model
    dsa.set_stage(dense_model, "dense")
    dsa.set_stage(sparse_model, "sparse")
    calls = {
        "dense": lambda: prefill(dense_model, tokens),
        "dsa": lambda: prefill(sparse_model, tokens),
    }
    ms = interleaved_ms(calls, n, label=f"prefill {context}: ", warm_up=warm_up)
    return {"dense_ms": ms["dense"], "dsa_ms": ms["dsa"], "dense_over_dsa": ms["dense"] / ms["dsa"]}


def print_table(report: dict) -> None:
    print(
        f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs; "
        f"{report['layers']} layers, top-k {report['topk']}; median over interleaved repeats"
    )
    print("decode, one token:")
    columns = {f"context {c}": row for c, row in report["decode"].items()}
    print_columns(
        columns,
        [
            ("dense absorbed MLA", lambda r: f"{r['dense_ms']:.2f} ms"),
            ("DSA", lambda r: f"{r['dsa_ms']:.2f} ms"),
            ("dense / DSA", lambda r: f"{r['dense_over_dsa']:.2f}x"),
            ("indexer alone", lambda r: f"{r['indexer_ms']:.2f} ms"),
            ("indexer share of DSA", lambda r: f"{100 * r['indexer_share']:.0f}%"),
        ],
        width=16,
    )
    print("prefill:")
    columns = {f"context {c}": row for c, row in report["prefill"].items()}
    print_columns(
        columns,
        [
            ("dense (causal kernel)", lambda r: f"{r['dense_ms']:.1f} ms"),
            ("DSA (gathered)", lambda r: f"{r['dsa_ms']:.1f} ms"),
            ("dense / DSA", lambda r: f"{r['dense_over_dsa']:.2f}x"),
        ],
        width=16,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_flags(parser)
    args = parser.parse_args(argv)
    contexts = SMOKE_CONTEXTS if args.smoke else QUICK_CONTEXTS if args.quick else CONTEXTS
    prefills = SMOKE_CONTEXTS if args.smoke else PREFILL_CONTEXTS
    topk = SMOKE_TOPK if args.smoke else TOPK
    t0 = time.perf_counter()
    model = Transformer(config(max(contexts) + 1, topk, args.smoke), rngs=nnx.Rngs(0))
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "topk": topk,
        "layers": model.cfg.n_layers,
        "decode": {},
        "prefill": {},
    }
    n, warm = repeats(args, full=15, quick=5), not args.smoke
    for context in contexts:
        report["decode"][str(context)] = bench_decode(model, context, n, warm)
    for context in prefills:
        report["prefill"][str(context)] = bench_prefill(model, context, repeats(args, 5, 3), warm)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()

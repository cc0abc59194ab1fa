"""Where a GRPO step's time goes: sampling the rollouts (with and without a KV cache) vs the update.

    python benchmarks/bench_grpo.py            # a readable table (about a minute on 2 CPU cores)
    python benchmarks/bench_grpo.py --quick    # fewer repeats
    python benchmarks/bench_grpo.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_grpo.py --json     # one JSON object on stdout, nothing else

The model is notebook 04's (the `tiny` preset with max_seq_len 48, untrained weights) and the batch is
its GRPO batch: 16 prompts of two-digit addition x G = 8 completions of up to 44 new tokens.

1. Rollout speed: new tokens per second of `minids.generate.generate` (one prefill, then one cached
   decoding step per token, all in one compiled `lax.while_loop`) against `generate_recompute`
   (the whole sequence re-run for every new token), both at temperature 1 with no early stop
   (`eos_id=-1`), so both write exactly B x 44 tokens.
2. The step's split: a GRPO step is sample (generate + decode + grade) then update
   (`grpo_step`, forward and backward over prompt + completion). Both parts are timed
   separately on the same batch, with beta = 0 (no reference model) and with beta = 0.04 (one more
   forward pass, the reference's log-probs, counted with the update). An untrained model rarely
   emits EOS, so its rollouts run to the full 44 tokens: the longest a trained one writes is 42.

Each figure is the median over repeats that alternate the timed parts, so a slow moment of a shared
machine hits all of them; compilation and a warm-up call are excluded.

JSON keys (`--json`):

    backend, jax_version, cpu_count                where it ran
    batch, max_new_tokens, params                  B = prompts x G, new tokens, model parameters
    cached_tokens_per_s, recompute_tokens_per_s    rollout speed, new tokens per second
    cache_speedup                                  cached / recompute
    sample_ms                                      one batch of rollouts: generate + decode + rewards
    update_ms, update_ms_with_ref                  one grpo_step (beta 0); + reference scoring (beta 0.04)
    generation_share, generation_share_with_ref    sample_ms / (sample_ms + update_ms[_with_ref])
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
from minids.data import CharTokenizer, load_split
from minids.generate import generate, generate_recompute
from minids.grpo import group_advantages
from minids.grpo_trainer import (
    GRPOConfig,
    grpo_step,
    make_grpo_optimizer,
    sample_groups,
    score_completions,
)
from minids.model import Transformer, count_params

PROMPTS, G, NEW = 16, 8, 44
SMOKE_PROMPTS, SMOKE_G, SMOKE_NEW = 2, 2, 8


def timed(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_flags(parser)
    args = parser.parse_args(argv)
    n_repeats = repeats(args, full=7, quick=3)
    n_prompts, group, new = (SMOKE_PROMPTS, SMOKE_G, SMOKE_NEW) if args.smoke else (PROMPTS, G, NEW)
    t_start = time.perf_counter()

    model = Transformer(preset("tiny", max_seq_len=48))
    tok = CharTokenizer()
    rows = [r for r in load_split("val") if r["task"] == "add"][:n_prompts]
    prompts = [tok.encode(r["prompt"], bos=True) for r in rows for _ in range(group)]
    cfg = GRPOConfig(prompts_per_step=n_prompts, group_size=group, max_new_tokens=new)
    cfg_ref = GRPOConfig(
        prompts_per_step=n_prompts, group_size=group, max_new_tokens=new, beta=0.04
    )
    key = jax.random.key(0)
    sampling = dict(max_new_tokens=new, temperature=1.0, key=key, eos_id=-1)

    roll = sample_groups(model, rows, cfg, key)
    adv = group_advantages(jnp.asarray(roll.rewards.reshape(-1, group)), "group").reshape(-1)
    batch = {
        "prompt_tokens": jnp.asarray(roll.prompt_tokens),
        "prompt_mask": jnp.asarray(roll.prompt_mask),
        "tokens": jnp.asarray(roll.tokens),
        "mask": jnp.asarray(roll.mask),
        "advantages": adv,
        "temperature": jnp.float32(1.0),
    }
    ref = nnx.clone(model)
    policy, policy_ref = nnx.clone(model), nnx.clone(model)
    opt, opt_ref = make_grpo_optimizer(policy, cfg), make_grpo_optimizer(policy_ref, cfg_ref)

    def update():
        return grpo_step(policy, opt, batch, cfg)["loss"]

    def update_with_ref():
        ref_logp = score_completions(
            ref, batch["prompt_tokens"], batch["prompt_mask"], batch["tokens"], batch["temperature"]
        )
        return grpo_step(policy_ref, opt_ref, {**batch, "ref_logp": ref_logp}, cfg_ref)["loss"]

    calls = {
        "cached": lambda: generate(model, prompts, **sampling).tokens,
        "recompute": lambda: generate_recompute(model, prompts, **sampling).tokens,
        "sample": lambda: sample_groups(model, rows, cfg, key).rewards,
        "update": update,
        "update_with_ref": update_with_ref,
    }
    for label, call in calls.items():
        t = time.perf_counter()
        call()  # compile
        if not args.smoke:
            call()  # warm up
        log(f"  {label}: compiled and warm in {time.perf_counter() - t:.1f} s")
    times = {label: [] for label in calls}
    for _ in range(n_repeats):
        for label, call in calls.items():
            times[label].append(timed(call))
    ms = {label: 1e3 * float(np.median(t)) for label, t in times.items()}
    tokens = len(prompts) * new
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "batch": len(prompts),
        "max_new_tokens": new,
        "params": count_params(model),
        "cached_tokens_per_s": tokens / ms["cached"] * 1e3,
        "recompute_tokens_per_s": tokens / ms["recompute"] * 1e3,
        "cache_speedup": ms["recompute"] / ms["cached"],
        "sample_ms": ms["sample"],
        "update_ms": ms["update"],
        "update_ms_with_ref": ms["update_with_ref"],
        "generation_share": ms["sample"] / (ms["sample"] + ms["update"]),
        "generation_share_with_ref": ms["sample"] / (ms["sample"] + ms["update_with_ref"]),
    }
    log(f"done in {time.perf_counter() - t_start:.0f} s")
    if args.json:
        print(json.dumps(report))
        return report
    print(
        f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs; "
        f"{report['params']:,} parameters, {report['batch']} rollouts "
        f"({n_prompts} prompts x G {group}) of {new} new tokens; medians over interleaved repeats"
    )
    rows_ = [
        ("rollout, KV cache", lambda r: f"{r['cached_tokens_per_s']:,.0f} tok/s"),
        ("rollout, recompute", lambda r: f"{r['recompute_tokens_per_s']:,.0f} tok/s"),
        ("cache speed-up", lambda r: f"{r['cache_speedup']:.1f}x"),
        ("sampling a batch", lambda r: f"{r['sample_ms']:.0f} ms"),
        ("update (beta 0)", lambda r: f"{r['update_ms']:.0f} ms"),
        ("update + reference (0.04)", lambda r: f"{r['update_ms_with_ref']:.0f} ms"),
        ("generation share, beta 0", lambda r: f"{100 * r['generation_share']:.0f}%"),
        ("generation share, beta 0.04", lambda r: f"{100 * r['generation_share_with_ref']:.0f}%"),
    ]
    print_columns({"GRPO step": report}, rows_, width=22)
    return report


if __name__ == "__main__":
    main()

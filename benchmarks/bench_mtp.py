"""Multi-token prediction: what a module costs in training, how often its drafts are accepted, and
how fast self-speculative decoding is against plain cached decoding (one process).

    python benchmarks/bench_mtp.py                  # tiny and small, a table (~10 min, 2 cores)
    python benchmarks/bench_mtp.py --preset tiny    # one preset
    python benchmarks/bench_mtp.py --quick          # fewer training steps and repeats
    python benchmarks/bench_mtp.py --smoke          # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_mtp.py --json           # one JSON object on stdout, nothing else

What it measures, for each preset:

- Training: `minids.train.train_step` of the preset with one MTP module (`MTPConfig(depth=1)`)
  against the preset without, same batch (tiny B=64, small B=16, T = the preset's max_seq_len),
  timed in turn (`_common.interleaved_ms`); compilation and warm-up excluded.
- A model that has learned its tasks: the preset with D=1 (for `small`, max_seq_len 24, the tasks'
  length) trained by `minids.train.fit` on the shipped tasks (tiny 1500 steps, small 1000). Its
  greedy exact-match accuracy and the acceptance rate of its drafts on 256 held-out test prompts
  (answers end at EOS).
- Decoding speed, greedy and sampled (temperature 1): `generate(..., speculative=True)` against
  plain cached `generate`, the trained model, 8 held-out prompts, 128 new tokens, EOS disabled so
  every sequence runs to the end; tokens per second, and the acceptance rate of those runs. The
  cost of one pass of the speculative loop over one plain decoding step says what acceptance the
  loop needs to break even: speed-up = (1 + acceptance) / pass_cost_ratio
  (`minids.mtp.speculative_speedup`).

JSON keys (`--json`):

    backend, jax_version, cpu_count    where it ran
    presets: {name: {...}}             one object per preset, with
        train_batch, seq_len           the training-step batch
        params, mtp_params             main model parameters; those of the MTP module
        train_step_ms                  median train_step without MTP, milliseconds
        train_step_mtp_ms              the same with one MTP module
        train_time_ratio               train_step_mtp_ms / train_step_ms
        fit_steps, fit_seconds         the training of the model used below
        heldout_prompts                held-out prompts graded
        heldout_exact_match            greedy exact-match accuracy of the trained model
        heldout_acceptance             accepted drafts / drafts on them (greedy, to EOS)
        gen_batch, gen_new_tokens      the decoding runs below
        greedy, sampled: {...}         one object per decoding mode, with
            plain_tokens_per_s         plain cached decoding, new tokens per second (median)
            speculative_tokens_per_s   self-speculative decoding, the same
            speedup                    speculative_tokens_per_s / plain_tokens_per_s
            acceptance                 accepted drafts / drafts in the speculative runs
            passes                     passes of the speculative loop for 128 tokens
            pass_cost_ratio            time of one speculative pass / one plain decoding step

Targets (benchmarks, never tests): acceptance >= 80% on held-out prompts for a model that has
learned its tasks; speculative decoding >= 1.5x plain decoding in tokens per second (V3: 85-90% and
1.8x). benchmarks/README.md reports what this machine measured and why the toy scale falls short.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import add_run_flags, interleaved_ms, log, print_columns, repeats

from minids.config import MTPConfig, param_counts, preset
from minids.data import CharTokenizer, load_split
from minids.generate import generate, task_accuracy
from minids.model import Transformer
from minids.train import TRAIN_PRESETS, TrainConfig, fit, make_optimizer, train_step

TRAIN_BATCH = {"tiny": 64, "small": 16}
FIT_STEPS = {"tiny": 1500, "small": 1000}
HELDOUT, GEN_BATCH, GEN_NEW_TOKENS = 256, 8, 128
SMOKE = dict(train_batch=4, fit_steps=2, gen_batch=2, new_tokens=8)


def fit_config(name: str, args: argparse.Namespace) -> TrainConfig:
    """The preset's recipe, for the run that trains the model used below (and the timed steps)."""
    steps = SMOKE["fit_steps"] if args.smoke else FIT_STEPS[name] // (2 if args.quick else 1)
    recipe = TRAIN_PRESETS[name]
    return TrainConfig(
        steps=steps,
        batch_size=SMOKE["train_batch"] if args.smoke else recipe.batch_size,
        lr=recipe.lr,
        warmup_steps=min(recipe.warmup_steps, steps // 10),
        eval_every=0,
        eval_examples=0,
    )


def bench_train_step(name: str, args: argparse.Namespace) -> dict:
    batch_size = SMOKE["train_batch"] if args.smoke else TRAIN_BATCH[name]
    cfg = preset(name)
    T = cfg.max_seq_len
    rng = np.random.default_rng(0)
    batch = {
        "inputs": jnp.asarray(rng.integers(3, cfg.vocab_size, (batch_size, T)), jnp.int32),
        "targets": jnp.asarray(rng.integers(3, cfg.vocab_size, (batch_size, T)), jnp.int32),
        "loss_mask": jnp.ones((batch_size, T), jnp.float32),
    }
    calls = {}
    for label, c in (("plain", cfg), ("mtp", cfg.replace(mtp=MTPConfig()))):
        model = Transformer(c)
        optimizer = make_optimizer(model, fit_config(name, args))  # (shares a compiled step)
        b = dict(batch, mtp_weight=jnp.float32(0.3)) if c.mtp else batch
        calls[label] = lambda m=model, o=optimizer, b=b: train_step(m, o, b)
    ms = interleaved_ms(calls, repeats(args, 10, 4), label=f"{name}: train_step ")
    counts = param_counts(cfg.replace(mtp=MTPConfig()))
    return {
        "train_batch": batch_size,
        "seq_len": T,
        "params": counts.total,
        "mtp_params": counts.mtp,
        "train_step_ms": ms["plain"],
        "train_step_mtp_ms": ms["mtp"],
        "train_time_ratio": ms["mtp"] / ms["plain"],
    }


def trained_model(name: str, args: argparse.Namespace) -> tuple[Transformer, dict]:
    """The preset with one MTP module, trained on the shipped tasks."""
    cfg = preset(name, max_seq_len=24, mtp=MTPConfig())
    tcfg = fit_config(name, args)
    steps = tcfg.steps
    model = Transformer(cfg)
    history = fit(model, load_split("train"), None, tcfg, progress=False)
    log(f"  {name}: trained {steps} steps with MTP in {history.seconds:.0f} s")
    return model, {"fit_steps": steps, "fit_seconds": history.seconds}


def heldout(model: Transformer, args: argparse.Namespace) -> dict:
    tok = CharTokenizer()
    test = load_split("test")
    rng = np.random.default_rng(0)
    rows = [test[i] for i in rng.permutation(len(test))[:HELDOUT]]
    if args.smoke:  # the decoding runs' prompts and shapes: no further compilation
        rows = test[-SMOKE["gen_batch"] :]
    prompts = [tok.encode(r["prompt"], bos=True) for r in rows]
    gen = generate(model, prompts, max_new_tokens=8, speculative=True)
    accuracy = task_accuracy(model, rows, tok)["all"]
    return {
        "heldout_prompts": len(rows),
        "heldout_exact_match": accuracy,
        "heldout_acceptance": gen.acceptance_rate,
    }


def bench_decoding(model: Transformer, args: argparse.Namespace) -> dict:
    tok = CharTokenizer()
    batch = SMOKE["gen_batch"] if args.smoke else GEN_BATCH
    new_tokens = SMOKE["new_tokens"] if args.smoke else GEN_NEW_TOKENS
    prompts = [tok.encode(r["prompt"], bos=True) for r in load_split("test")[-batch:]]
    result = {"gen_batch": batch, "gen_new_tokens": new_tokens}
    for mode, temperature in (("greedy", 0.0), ("sampled", 1.0)):
        kwargs = dict(
            max_new_tokens=new_tokens,
            eos_id=CharTokenizer.EOS if args.smoke else -1,  # --smoke: the held-out runs' compile
            temperature=temperature,
            key=jax.random.key(0),
        )
        spec = generate(model, prompts, speculative=True, **kwargs)

        def plain(kwargs=kwargs):
            return generate(model, prompts, **kwargs).tokens

        def speculative(kwargs=kwargs):
            return generate(model, prompts, speculative=True, **kwargs).tokens

        ms = interleaved_ms(
            {"plain": plain, "speculative": speculative},
            repeats(args, 7, 3),
            label=f"  {mode} decoding: ",
        )
        n = batch * new_tokens
        result[mode] = {
            "plain_tokens_per_s": n / (ms["plain"] / 1e3),
            "speculative_tokens_per_s": n / (ms["speculative"] / 1e3),
            "speedup": ms["plain"] / ms["speculative"],
            "acceptance": spec.acceptance_rate,
            "passes": spec.steps,
            "pass_cost_ratio": (ms["speculative"] / spec.steps) / (ms["plain"] / new_tokens),
        }
    return result


def print_table(report: dict) -> None:
    print(f"backend {report['backend']}, jax {report['jax_version']}, {report['cpu_count']} CPUs")
    rows = [
        (
            "train step, no MTP / D=1",
            lambda r: f"{r['train_step_ms']:.1f} / {r['train_step_mtp_ms']:.1f} ms",
        ),
        ("train time ratio", lambda r: f"{r['train_time_ratio']:.2f}x"),
        ("MTP params / main", lambda r: f"{r['mtp_params'] / r['params']:.0%}"),
        ("trained steps (s)", lambda r: f"{r['fit_steps']} ({r['fit_seconds']:.0f} s)"),
        ("held-out exact match", lambda r: f"{r['heldout_exact_match']:.1%}"),
        ("held-out acceptance", lambda r: f"{r['heldout_acceptance']:.1%}"),
    ]
    for mode in ("greedy", "sampled"):
        rows += [
            (f"{mode}: plain tok/s", lambda r, m=mode: f"{r[m]['plain_tokens_per_s']:,.0f}"),
            (
                f"{mode}: speculative tok/s",
                lambda r, m=mode: f"{r[m]['speculative_tokens_per_s']:,.0f}",
            ),
            (f"{mode}: speed-up", lambda r, m=mode: f"{r[m]['speedup']:.2f}x"),
            (f"{mode}: acceptance", lambda r, m=mode: f"{r[m]['acceptance']:.1%}"),
            (f"{mode}: pass / plain step", lambda r, m=mode: f"{r[m]['pass_cost_ratio']:.2f}x"),
        ]
    print_columns(report["presets"], rows, width=22)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=sorted(TRAIN_BATCH),
        action="append",
        help="measure only this preset (repeatable; default: tiny and small)",
    )
    add_run_flags(parser)
    args = parser.parse_args(argv)
    names = args.preset or (["tiny"] if args.smoke else list(TRAIN_BATCH))
    t0 = time.perf_counter()
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "presets": {},
    }
    for name in names:
        log(f"{name}:")
        result = bench_train_step(name, args)
        model, fitted = trained_model(name, args)
        result.update(fitted)
        result.update(heldout(model, args))
        result.update(bench_decoding(model, args))
        report["presets"][name] = result
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()

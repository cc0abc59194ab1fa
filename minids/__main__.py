"""Command line: `python -m minids train|generate|grpo|distill|cost ...` (also installed as the `minids` command).

python -m minids train --preset tiny                 # train on the shipped tasks, ~3 min on 2 CPU cores
python -m minids train --preset tiny --mtp-depth 1 --out runs/tiny_mtp   # with an MTP module (V3 §2.2)
python -m minids generate --ckpt runs/tiny/checkpoint --prompt "12+35="
python -m minids generate --ckpt runs/tiny_mtp --prompt "12+35=" --speculative   # MTP drafts
python -m minids grpo --ckpt runs/grpo_base --train-base   # notebook 04's demonstration, ~4 min
python -m minids grpo --ckpt runs/tiny/checkpoint --template plain --task count
python -m minids distill --teacher runs/tiny/checkpoint --student-layers 1   # R1-style distillation
python -m minids cost --preset deepseek_v3           # parameters, FLOPs, GPU-hours, dollars
python -m minids train --preset tiny_v3 --mesh data=2,expert=4   # 8 devices (notebook 08)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The options that set a config dataclass's fields, by command. Each one's default, type, choices and
# help come from the field itself (`_add_config_options`), so every default is written once.
# Every trainer saves periodically into its --out folder; these fields set how often and how many.
_CKPT_FIELDS = ("ckpt_every", "ckpt_minutes", "ckpt_keep")
_TRAIN_FIELDS = ("steps", "batch_size", "lr", "eval_every", "seed", *_CKPT_FIELDS)  # TrainConfig
_GRPO_FIELDS = (  # GRPOConfig
    "steps",
    "prompts_per_step",
    "group_size",
    "mu",
    "lr",
    "beta",
    "ref_refresh_every",
    "epsilon_low",
    "epsilon_high",
    "loss_type",
    "scale_rewards",
    "ratio_level",
    "drop_equal_groups",
    "temperature",
    "max_new_tokens",
    "template",
    "eval_every",
    "eval_k",
    "seed",
    *_CKPT_FIELDS,
)
_DISTILL_FIELDS = ("steps", "seed", *_CKPT_FIELDS)  # TrainConfig, the student's
_MTP_FIELDS = ("depth", "loss_weight", "loss_weight_final", "switch_at")  # MTPConfig, as --mtp-*
# What a training command writes into --out; --overwrite removes these and nothing else.
_RUN_FILES = ("checkpoint", "metrics.json", "loss.png")


def _add_config_options(
    parser: Any,
    cls: type,
    names: Sequence[str],
    *,
    derived: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
    prefix: str = "",
) -> None:
    """One option per named field of the dataclass `cls`: `--batch-size` for `batch_size`. `parser`
    is an ArgumentParser or one of its argument groups.

    The field is the option's single source: its default, its type, its `metadata["choices"]` and
    its `metadata["help"]`. `derived` names fields whose default the command takes from elsewhere
    (a preset, another option): those options have no default here (an omitted one is absent from
    the parsed arguments) and their help says where it comes from. `notes` adds words to a help.
    `prefix` goes in front of each option and its destination: `--mtp-depth` for `depth`.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # The fields' annotations, resolved as `typing.get_type_hints` would (which returns nothing for
    # the config classes: they are marked `@no_type_check`, see minids/config.py).
    namespace = vars(sys.modules[cls.__module__])
    types = {
        f.name: eval(f.type, namespace) if isinstance(f.type, str) else f.type
        for f in fields.values()
    }
    derived, notes = derived or {}, notes or {}
    for name in names:
        f = fields[name]
        if not f.metadata.get("help"):
            raise TypeError(f"{cls.__name__}.{name} has no metadata['help'] for its option")
        kwargs = {"dest": prefix + name, "help": f.metadata["help"] + notes.get(name, "")}
        if types[name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = types[name]
            kwargs["choices"] = f.metadata.get("choices")
        if name in derived:
            kwargs["default"] = argparse.SUPPRESS
            kwargs["help"] += f" (default: {derived[name]})"
        else:
            kwargs["default"] = f.default
        action = parser.add_argument("--" + (prefix + name).replace("_", "-"), **kwargs)
        action.config_field = (
            cls,
            name,
        )  # how tests/test_cli_defaults.py tells these options apart


def _config_values(args: argparse.Namespace, names: Sequence[str], prefix: str = "") -> dict:
    """The named config fields' values that the parsed arguments hold (a derived one only if given)."""
    return {name: getattr(args, prefix + name) for name in names if hasattr(args, prefix + name)}


def _prepare_out(args: argparse.Namespace, resume: bool | None = None) -> Path:
    """The --out folder of a training command, checked: a run there is never replaced silently.

    A folder that holds a run needs --resume (continue it) or --overwrite (start again); a file,
    or a folder that cannot be made, is an error. `resume` overrides args.resume."""
    from minids.checkpoint import holds_checkpoint, latest_step

    out = Path(args.out)
    resume = args.resume if resume is None else resume
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: pick one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder for the run's files")
    if resume:
        if not holds_checkpoint(out / "checkpoint"):
            raise ValueError(f"--resume: {args.out} holds no checkpoint to resume from")
        return out
    if out.is_dir() and any((out / name).exists() for name in _RUN_FILES):
        if not args.overwrite:
            step = latest_step(out / "checkpoint")
            at = f" (checkpoint at step {step})" if step is not None else ""
            raise ValueError(
                f"--out {args.out} already holds a run{at}; add --resume to continue it or "
                "--overwrite to start again"
            )
        for name in _RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create --out {args.out}: {err.strerror or err}") from None
    return out


def _train(args: argparse.Namespace) -> int:
    from minids.config import MTPConfig, preset
    from minids.data import load_local, load_split, shipped_data_dir
    from minids.generate import task_accuracy
    from minids.model import Transformer, count_params
    from minids.plots import save_loss_plot
    from minids.train import TRAIN_PRESETS, fit

    if args.distributed:  # one process per host, joined before anything asks JAX for devices
        import jax

        jax.distributed.initialize()  # coordinator, process count and id from the environment
    overrides = {"seed": args.seed}
    if args.dtype:
        overrides["dtype"] = args.dtype
    mtp = _config_values(args, _MTP_FIELDS, prefix="mtp_")
    if mtp:  # any --mtp-* option switches the modules on (depth 1 unless told)
        overrides["mtp"] = MTPConfig(**mtp)
    cfg = preset(args.preset, **overrides)
    tcfg = dataclasses.replace(TRAIN_PRESETS[args.preset], **_config_values(args, _TRAIN_FIELDS))
    if args.eval_prompts is not None and args.eval_prompts < 1:
        raise ValueError(
            f"--eval-prompts must be at least 1 (or left out for all), got {args.eval_prompts}"
        )
    step_fn = None
    if args.mesh:  # data and expert parallelism over the devices of this process (or of all hosts)
        from minids.parallel import make_mesh, mesh_step, parse_mesh

        mesh = make_mesh(**parse_mesh(args.mesh))
        if tcfg.batch_size % mesh.size:
            raise ValueError(
                f"--batch-size {tcfg.batch_size} must be a multiple of the mesh's {mesh.size} devices"
            )
        print(f"mesh: {dict(mesh.shape)} over {mesh.size} {mesh.devices.flat[0].platform} devices")
        step_fn = mesh_step(mesh)

    if args.dataset:
        rows = load_local(args.dataset)
        n_val = max(1, len(rows) // 20)
        train, val, test = rows[:-n_val], rows[-n_val:], rows[-n_val:]
        if len(train) < tcfg.batch_size:
            raise ValueError(
                f"--dataset {args.dataset} has {len(rows)} rows: {len(train)} to train on after "
                f"holding out {n_val}, fewer than one batch (--batch-size {tcfg.batch_size})"
            )
        print(f"dataset {args.dataset}: {len(train)} training rows, {n_val} held out")
    else:
        data_dir = args.data or shipped_data_dir()
        train, val, test = (load_split(s, data_dir) for s in ("train", "val", "test"))

    out = _prepare_out(args)
    model = Transformer(cfg)
    print(f"model: preset {args.preset!r}, {count_params(model):,} parameters, compute {cfg.dtype}")
    if cfg.mtp is not None:
        print(
            f"multi-token prediction: {cfg.mtp.depth} module(s), lambda {cfg.mtp.loss_weight} then "
            f"{cfg.mtp.loss_weight_final} after {cfg.mtp.switch_at:.0%} of the steps"
        )
    print(f"training: {tcfg.steps} steps of {tcfg.batch_size} examples, peak lr {tcfg.lr}")
    history = fit(
        model,
        train,
        val,
        tcfg,
        ckpt_dir=out / "checkpoint",
        resume=args.resume,
        progress=not args.no_progress,
        step_fn=step_fn,
    )
    print(f"final training loss {history.loss[-1]:.4f}", end="")
    if history.val_loss:
        print(f", validation loss {history.val_loss[-1]:.4f}", end="")
    print(f" ({history.seconds:.0f} s of training)")
    if history.mtp_loss:
        print(f"final MTP loss (mean over the modules) {history.mtp_loss[-1]:.4f}")
    accuracy = task_accuracy(model, test[: args.eval_prompts])  # None: all of them
    print("held-out exact-match accuracy (greedy):")
    for task, acc in accuracy.items():
        print(f"  {task:>8}: {100 * acc:5.1f}%")
    save_loss_plot(history, out / "loss.png")
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "accuracy": accuracy,
                "history": history.to_dict(),
                "model_config": cfg.to_dict(),
                "train_config": dataclasses.asdict(tcfg),
            },
            indent=1,
        )
    )
    print(f"wrote {out / 'checkpoint'}, {out / 'loss.png'} and {out / 'metrics.json'}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import jax

    from minids.data import CharTokenizer
    from minids.generate import generate_text
    from minids.train import load_checkpoint

    model, _ = load_checkpoint(args.ckpt)
    if args.speculative and model.cfg.mtp is None:
        raise ValueError(
            f"--speculative drafts with an MTP module, and {args.ckpt} has none; train one with "
            "`python -m minids train --mtp-depth 1`"
        )
    outputs = generate_text(
        model,
        CharTokenizer(),
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        key=jax.random.key(args.seed),
        speculative=args.speculative,
    )
    for prompt, completion in zip(args.prompt, outputs, strict=True):
        print(f"{prompt}{completion}")
    return 0


def _grpo(args: argparse.Namespace) -> int:
    from minids.checkpoint import holds_checkpoint, read_meta
    from minids.config import preset
    from minids.data import load_split
    from minids.grpo_trainer import GRPOConfig, train_grpo
    from minids.model import Transformer
    from minids.rewards import r1_sft_examples
    from minids.train import TrainConfig, fit, load_checkpoint

    rewards = ("accuracy", "format") if args.template == "r1" else ("plain_accuracy",)
    weights = (1.0, args.format_weight) if args.template == "r1" else (1.0,)
    if args.format_only:
        rewards, weights = ("format",), (1.0,)
    values = _config_values(args, _GRPO_FIELDS)
    values.setdefault(
        "epsilon_high", values["epsilon_low"]
    )  # a symmetric clip unless told otherwise
    cfg = GRPOConfig(**values, rewards=rewards, reward_weights=weights)
    train = [r for r in load_split("train") if r["task"] == args.task]
    held_out = [r for r in load_split("test") if r["task"] == args.task][: args.eval_prompts]
    if not train:
        raise ValueError(f"no training prompts for task {args.task!r}")
    half = len(train) // 2  # the demonstration base learns from one half, GRPO samples the other
    # A run stopped while training its base has no GRPO checkpoint yet: it resumes the base only.
    resume = args.resume and not (
        args.train_base and not holds_checkpoint(Path(args.out) / "checkpoint")
    )
    out = _prepare_out(args, resume)
    if args.train_base:
        if args.task != "add" or args.template != "r1":
            raise ValueError(
                "--train-base makes the demonstration base: it needs --task add and --template r1"
            )
        base = Path(args.ckpt)
        has_base = holds_checkpoint(base)
        if has_base and not (args.resume or args.overwrite):
            raise ValueError(
                f"--ckpt {args.ckpt} already holds a checkpoint that --train-base would replace; "
                "add --resume to continue from it or --overwrite to train a new base"
            )
        if has_base and args.overwrite:
            _remove_checkpoint_folder(base)
            has_base = False
        if not (has_base and read_meta(base)["step"] >= args.base_steps):
            model = Transformer(preset("tiny", max_seq_len=48, seed=args.seed))
            print(
                f"training the demonstration base for {args.base_steps} steps "
                "(see minids.rewards.r1_sft_examples)"
            )
            fit(
                model,
                r1_sft_examples(train[:half], seed=args.seed),
                None,
                TrainConfig(
                    steps=args.base_steps,
                    batch_size=64,
                    lr=3e-3,
                    warmup_steps=50,
                    eval_every=0,
                    seed=args.seed,
                ),
                ckpt_dir=base,
                resume=has_base,
                progress=not args.no_progress,
            )
            print(f"wrote the base model to {args.ckpt}")
    model, _ = load_checkpoint(args.ckpt)
    prompts = train[half:] if args.template == "r1" else train
    print(
        f"GRPO: {cfg.steps} steps x {cfg.prompts_per_step} prompts x G={cfg.group_size}, "
        f"loss {cfg.loss_type}, beta {cfg.beta}, lr {cfg.lr}; rewards {dict(zip(rewards, weights, strict=True))}"
    )
    history = train_grpo(
        model,
        prompts,
        cfg,
        eval_examples=held_out,
        ckpt_dir=out / "checkpoint",
        resume=resume,
        progress=not args.no_progress,
    )
    before, after = history.eval[0], history.eval[-1]
    print(
        f"{history.seconds:.0f} s of GRPO ({history.gen_seconds:.0f} s sampling, "
        f"{history.update_seconds:.0f} s updating)"
    )
    print(f"held-out {args.task!r}, {len(held_out)} prompts never trained on:")
    for name in after:
        print(f"  {name:>16}: {100 * before[name]:5.1f}% -> {100 * after[name]:5.1f}%")
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
                "history": history.to_dict(),
                "grpo_config": dataclasses.asdict(cfg),
            },
            indent=1,
        )
    )
    print(f"wrote {out / 'checkpoint'} and {out / 'metrics.json'}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from minids.config import preset
    from minids.data import load_split
    from minids.distill import accuracy, fit_logit_distillation, rejection_sample, task_check
    from minids.model import Transformer, count_params
    from minids.train import TRAIN_PRESETS, fit, load_checkpoint

    out = _prepare_out(args)
    teacher, _ = load_checkpoint(args.teacher)
    if args.template == "r1":
        from minids.rewards import accuracy_reward

        def check(example, completion):
            return accuracy_reward(example, completion) > 0
    else:
        check = task_check
    tasks = args.task or sorted({r["task"] for r in load_split("train")})
    train, val, test = (
        [r for r in load_split(s) if r["task"] in tasks] for s in ("train", "val", "test")
    )
    if not train:
        raise ValueError(f"no training prompts for --task {tasks}")
    overrides = {"max_seq_len": teacher.cfg.max_seq_len, "seed": args.seed}
    overrides.update(
        {
            k: v
            for k, v in (("d_model", args.student_d_model), ("n_layers", args.student_layers))
            if v
        }
    )
    student = Transformer(preset(args.student_preset, **overrides))
    tcfg = dataclasses.replace(
        TRAIN_PRESETS[args.student_preset], eval_every=0, **_config_values(args, _DISTILL_FIELDS)
    )
    print(
        f"teacher: {count_params(teacher):,} parameters; student ({args.student_preset}): "
        f"{count_params(student):,}"
    )
    test = test[: args.eval_prompts]
    if args.mode == "sequence":
        data, stats = rejection_sample(
            teacher,
            train[: args.prompts],
            samples_per_prompt=args.samples_per_prompt,
            keep_per_prompt=args.keep_per_prompt,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            check=check,
            seed=args.seed,
        )
        print(
            f"rejection sampling: {stats.samples} samples for {stats.prompts} prompts, {stats.correct} correct, "
            f"kept {stats.kept} (prompts with a kept sample: {stats.prompts_with_a_keeper})"
        )
        if not data:
            raise ValueError(
                "the teacher produced no sample the checker accepts; nothing to distil"
            )
        history = fit(
            student,
            data,
            None,
            dataclasses.replace(tcfg, batch_size=min(tcfg.batch_size, len(data))),
            ckpt_dir=out / "checkpoint",
            resume=args.resume,
            progress=not args.no_progress,
        )
    else:
        history = fit_logit_distillation(
            student,
            teacher,
            train,
            val,
            tcfg,
            alpha=args.alpha,
            temperature=args.temperature,
            ckpt_dir=out / "checkpoint",
            resume=args.resume,
            progress=not args.no_progress,
        )
    results = {
        name: accuracy(m, test, check=check, max_new_tokens=args.max_new_tokens)
        for name, m in (("teacher", teacher), ("student", student))
    }
    print(
        f"held-out greedy accuracy on {len(test)} test prompts: teacher {100 * results['teacher']:.1f}%, "
        f"student {100 * results['student']:.1f}% ({history.seconds:.0f} s of student training)"
    )
    (out / "metrics.json").write_text(
        json.dumps({"accuracy": results, "history": history.to_dict(), "mode": args.mode}, indent=1)
    )
    print(f"wrote {out / 'checkpoint'} and {out / 'metrics.json'}")
    return 0


def _cost(args: argparse.Namespace) -> int:
    from minids.config import preset
    from minids.cost import H800_PEAK, cost_report, format_report

    try:
        peak = H800_PEAK[args.peak] if args.peak in H800_PEAK else float(args.peak) * 1e12
    except ValueError:
        raise ValueError(
            f"--peak must be {' or '.join(H800_PEAK)} or a number of TFLOP/s, got {args.peak!r}"
        ) from None
    cfg = preset(args.preset)
    if args.mtp_depth:
        from minids.config import MTPConfig

        cfg = cfg.replace(mtp=MTPConfig(depth=args.mtp_depth))
    report = cost_report(
        cfg,
        tokens=args.tokens * 1e12,
        peak_flops=peak,
        mfu=args.mfu,
        price_per_gpu_hour=args.price,
        seq_len=args.seq_len,
    )
    print(format_report(f"preset {args.preset!r}", report))
    if cfg.moe is not None:  # what expert parallelism sends per token (minids.parallel)
        from minids.cost import format_all_to_all

        print(format_all_to_all(cfg))
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """--resume and --overwrite: what to do with a run already in --out (`_prepare_out`)."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (<out>/checkpoint)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (its checkpoint/, metrics.json and loss.png)",
    )


def _remove_checkpoint_folder(folder: Path) -> None:
    """Delete a folder of checkpoint steps, refusing one that holds anything else."""
    from minids.checkpoint import latest_step

    strays = [p.name for p in folder.iterdir() if not p.name.split(".")[0].isdigit()]
    if latest_step(folder) is None or strays:
        raise ValueError(
            f"--overwrite: {folder} is not a folder of checkpoint steps only "
            f"(it holds {sorted(strays)[:5]}); move it away yourself"
        )
    shutil.rmtree(folder)


def build_parser() -> argparse.ArgumentParser:
    from minids.config import MTPConfig
    from minids.grpo_trainer import GRPOConfig
    from minids.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="python -m minids",
        description="minids: learn DeepSeek-V3 and R1 by building them. Train a tiny model, sample from it.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,generate,grpo,distill,cost}"
    )

    t = sub.add_parser(
        "train",
        help="train a model on the shipped tasks (or your own data)",
        description="Train a model from a preset on the shipped task data (data/*.jsonl) or your own "
        "file; print the loss and held-out exact-match accuracy per task; write a checkpoint, a "
        "loss-curve PNG and metrics.json to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "small", "tiny_v3"],
        help="model: tiny, small, or tiny_v3 (DeepSeek-V3's architecture at toy size)",
    )
    t.add_argument("--out", default=None, help="output folder (default: runs/<preset>)")
    from_preset = "the --preset's recipe in minids.train.TRAIN_PRESETS"
    _add_config_options(
        t.add_argument_group("training (fields of minids.train.TrainConfig)"),
        TrainConfig,
        _TRAIN_FIELDS,
        derived=dict.fromkeys(("steps", "batch_size", "lr", "eval_every"), from_preset),
        notes={"seed": " and of the model's initialisation"},
    )
    _add_config_options(
        t.add_argument_group(
            "multi-token prediction (fields of minids.config.MTPConfig; any of them switches it on)"
        ),
        MTPConfig,
        _MTP_FIELDS,
        derived=dict.fromkeys(_MTP_FIELDS, "no MTP module; with one, MTPConfig's"),
        prefix="mtp_",
    )
    t.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="compute dtype (default float32; bfloat16 suits a GPU/TPU)",
    )
    t.add_argument(
        "--mesh",
        default=None,
        help="train on several devices, e.g. data=2,expert=4: the batch split over all of them, the "
        "routed experts over `expert` (minids.parallel). On a CPU, simulate devices with "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8",
    )
    t.add_argument(
        "--distributed",
        action="store_true",
        help="several hosts: call jax.distributed.initialize() first (run the same command on every "
        "host; the coordinator comes from the environment, e.g. SLURM or JAX_COORDINATOR_ADDRESS)",
    )
    t.add_argument("--data", default=None, help="folder with train/val/test.jsonl (default: data/)")
    t.add_argument(
        "--eval-prompts",
        type=int,
        default=None,
        help="held-out prompts scored at the end (default: the whole test split)",
    )
    t.add_argument(
        "--dataset",
        default=None,
        help="your own local .jsonl (prompt/answer or text fields) or .txt file",
    )
    _add_run_options(t)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    g = sub.add_parser(
        "generate",
        help="sample completions from a checkpoint",
        description="Load a checkpoint written by `train` and complete one or more prompts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument(
        "--ckpt",
        required=True,
        help="a run folder (runs/tiny), its checkpoint/ folder, or one step inside it",
    )
    g.add_argument(
        "--prompt",
        action="append",
        required=True,
        help='a prompt such as "12+35="; repeat the flag for a batch',
    )
    g.add_argument("--max-new-tokens", type=int, default=16, help="longest completion")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument(
        "--speculative",
        action="store_true",
        help="self-speculative decoding: the checkpoint's MTP module drafts every second token "
        "and the model checks it (same output as without, faster when drafts are accepted)",
    )
    g.set_defaults(func=_generate)

    r = sub.add_parser(
        "grpo",
        help="improve a checkpoint with GRPO and rule-based rewards",
        description="Run GRPO (DeepSeekMath eq. 3, R1-Zero style rewards) from a checkpoint on one "
        "task's training prompts; print held-out greedy accuracy and pass@k before and after; "
        "write the new checkpoint and metrics.json to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument(
        "--ckpt",
        required=True,
        help="base checkpoint folder (with --train-base: where to write it)",
    )
    r.add_argument(
        "--train-base",
        action="store_true",
        help="first train notebook 04's demonstration base (flawed R1-template SFT) into --ckpt",
    )
    r.add_argument("--base-steps", type=int, default=600, help="supervised steps of --train-base")
    r.add_argument("--out", default="runs/grpo", help="output folder")
    _add_run_options(r)
    r.add_argument(
        "--task", default="add", help="task whose prompts are used (add, sub, sort, rev, count)"
    )
    format_weight = dict(zip(GRPOConfig.rewards, GRPOConfig.reward_weights, strict=True))["format"]
    r.add_argument(
        "--format-weight",
        type=float,
        default=format_weight,
        help="weight of the format reward with --template r1, as in GRPOConfig.reward_weights",
    )
    r.add_argument(
        "--format-only", action="store_true", help="reward the format alone (reward hacking)"
    )
    r.add_argument("--eval-prompts", type=int, default=500, help="held-out prompts (test split)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(
        r.add_argument_group("GRPO (fields of minids.grpo_trainer.GRPOConfig)"),
        GRPOConfig,
        _GRPO_FIELDS,
        derived={"epsilon_high": "--epsilon-low"},
        notes={
            "template": "; r1 is rewarded for accuracy + format, plain for accuracy alone (a base "
            "from `minids train` answers plain)",
            "seed": " (and of the --train-base model)",
        },
    )
    r.set_defaults(func=_grpo)

    d = sub.add_parser(
        "distill",
        help="distil a teacher checkpoint into a smaller student (R1 section 2.4)",
        description="Train a student from a teacher checkpoint: --mode sequence samples the teacher on "
        "training prompts, keeps the completions the answer checker accepts and fine-tunes the student "
        "on them (as DeepSeek-R1 did); --mode logit trains the student on the data with the teacher's "
        "temperature-softened logits (KL, weight --alpha). Prints held-out greedy accuracy of both.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--teacher", required=True, help="teacher checkpoint folder")
    d.add_argument("--mode", choices=["sequence", "logit"], default="sequence")
    d.add_argument("--out", default="runs/distill", help="output folder")
    _add_run_options(d)
    d.add_argument("--student-preset", choices=["tiny", "small", "tiny_v3"], default="tiny")
    d.add_argument("--student-d-model", type=int, default=None, help="override the student's width")
    d.add_argument("--student-layers", type=int, default=None, help="override the student's depth")
    d.add_argument("--task", action="append", default=None, help="task(s) to use (default: all)")
    d.add_argument(
        "--template",
        choices=["plain", "r1"],
        default="plain",
        help="how answers are checked: plain (the completion is the answer) or r1 (<answer> tags)",
    )
    d.add_argument(
        "--prompts", type=int, default=2000, help="training prompts the teacher samples (sequence)"
    )
    d.add_argument("--samples-per-prompt", type=int, default=4)
    d.add_argument("--keep-per-prompt", type=int, default=1)
    d.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature (sequence) or distillation temperature T (logit)",
    )
    d.add_argument("--alpha", type=float, default=0.5, help="weight of the KL term (logit)")
    d.add_argument("--max-new-tokens", type=int, default=8)
    d.add_argument("--eval-prompts", type=int, default=500)
    d.add_argument("--no-progress", action="store_true")
    _add_config_options(
        d.add_argument_group("the student's training (fields of minids.train.TrainConfig)"),
        TrainConfig,
        _DISTILL_FIELDS,
        derived={"steps": "the --student-preset's recipe in minids.train.TRAIN_PRESETS"},
        notes={"seed": ", the student's initialisation and the teacher's sampling"},
    )
    d.set_defaults(func=_distill)

    c = sub.add_parser(
        "cost",
        help="parameters, KV cache, training FLOPs, GPU-hours and dollars of a preset",
        description="Count a preset's parameters (total and activated), KV-cache bytes per token, "
        "training FLOPs per token, and the GPU-hours and dollars to train it (minids.cost; nothing "
        "is built). The defaults are DeepSeek-V3's pre-training: 14.8T tokens on H800s at $2/hour.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument(
        "--preset",
        default="deepseek_v3",
        choices=["deepseek_v3", "deepseek_v2", "deepseek_v2_lite", "tiny_v3", "tiny", "small"],
    )
    c.add_argument("--tokens", type=float, default=14.8, help="training tokens, in trillions")
    c.add_argument(
        "--peak",
        default="bf16",
        help="peak FLOP/s per GPU: bf16 or fp8 (an H800's dense peak), or a number of TFLOP/s",
    )
    c.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation, in (0, 1]")
    c.add_argument("--price", type=float, default=2.0, help="dollars per GPU-hour")
    c.add_argument(
        "--seq-len", type=int, default=None, help="training sequence length (default: the preset's)"
    )
    c.add_argument(
        "--mtp-depth",
        type=int,
        default=0,
        help="count D multi-token prediction modules too (V3: 1), apart from the total",
    )
    c.set_defaults(func=_cost)
    return parser


def main(argv: list[str] | None = None) -> int:
    from minids.checkpoint import Interrupted

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from minids.kernels.host_memory import keep_freed_memory

    # A training process on a CPU: keep freed host memory for reuse, before JAX starts its threads
    # (about 15% of a `small` step's CPU time otherwise goes to page faults; see the module).
    keep_freed_memory()
    if getattr(args, "out", "unset") is None:
        args.out = f"runs/{args.preset}"
    try:
        return args.func(args)
    except ValueError as err:  # bad input: a clear message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:  # SIGINT/SIGTERM: the step finished and a checkpoint was written
        again = [a for a in argv if a != "--overwrite"]
        again += [] if "--resume" in again else ["--resume"]
        print(
            f"stopped by {stop.signal_name} after step {stop.step}; saved {stop.checkpoint}. "
            f"Resume with: python -m minids {shlex.join(again)}",
            file=sys.stderr,
        )
        return 128 + signal.Signals[stop.signal_name].value


if __name__ == "__main__":
    sys.exit(main())

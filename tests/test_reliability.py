"""Training you can interrupt: periodic atomic checkpoints, safe stops, no silent overwrite, one clear
line for damaged files and bad data (issue 22). Each probe of the issue is a test here.

The fault-injection test runs one small training script in a subprocess four times over the same
checkpoint folder, killing it with SIGKILL just before a checkpoint commits, in the middle of a step
and at a random moment while it saves every step; after each death the latest checkpoint must load,
and the last run, resumed to the end, must give exactly the losses of a run never interrupted.
SIGINT and SIGTERM are sent by the process to itself, in the middle of a step (no subprocess).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import minids.train as train_mod
from minids.__main__ import main
from minids.checkpoint import (
    CheckpointError,
    Interrupted,
    SaveSchedule,
    latest_step,
    load_checkpoint,
    read_meta,
    restore_into,
    save_checkpoint,
)
from minids.data import CharTokenizer, generate_splits, load_local
from minids.fp8 import dequantize, fp8_matmul, fp8_round_trip, quantize
from minids.generate import generate, generate_text
from minids.model import Transformer
from minids.train import TrainConfig, fit, make_optimizer

TCFG = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=0, ckpt_every=3)


@pytest.fixture(scope="module")
def cfg(cfg):
    return cfg.replace(n_layers=1)


@pytest.fixture(scope="module")
def examples():
    return generate_splits(seed=0, sizes={"train": 32, "val": 8, "test": 0}, tasks=["add", "rev"])


def _fake_step(on_call=None):
    """A stand-in for `train_step` (nothing compiled): loss 1.0; `on_call(n)` runs at the n-th call."""
    calls = []

    def step(model, optimizer, batch):
        calls.append(1)
        if on_call is not None:
            on_call(len(calls))
        return {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}

    return step


def _signal_self(signum, at_calls):
    def on_call(n):
        if n in at_calls:
            os.kill(os.getpid(), signum)

    return on_call


# --------------------------------------------------------------------------- fault injection

_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    import orbax.checkpoint._src.path.atomicity as atomicity
    from minids.config import ModelConfig
    from minids.data import generate_splits
    from minids.model import Transformer
    from minids.train import TrainConfig, fit, holds_checkpoint, train_step

    ckpt, mode, at, model_cfg, train_cfg = sys.argv[1:6]
    at = int(at)
    cfg = ModelConfig.from_dict(json.loads(model_cfg))
    tcfg = TrainConfig(**json.loads(train_cfg))
    data = generate_splits(seed=0, sizes={"train": 32, "val": 8, "test": 0}, tasks=["add", "rev"])
    calls = []

    def step(model, optimizer, batch):
        calls.append(1)
        if mode == "kill_in_step" and len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
        out = train_step(model, optimizer, batch)
        print("step", len(calls), flush=True)
        return out

    if mode == "kill_before_commit":  # every file of step `at` written, its folder not yet renamed
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def dying_finalize(self, *args, **kwargs):
            if self.get_final().name == str(at):
                os.kill(os.getpid(), signal.SIGKILL)
            return await finalize(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = dying_finalize
    history = fit(Transformer(cfg), data["train"], None, tcfg, ckpt_dir=ckpt,
                  resume=holds_checkpoint(ckpt), progress=False, step_fn=step)
    print("losses", json.dumps(history.loss), flush=True)
    """
)


def test_killed_training_always_leaves_a_loadable_checkpoint_and_resumes_exactly(
    tmp_path, cfg, examples
):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    ckpt = tmp_path / "ckpt"

    def start(mode, at=0, tcfg=TCFG):
        argv = [str(ckpt), mode, str(at), json.dumps(cfg.to_dict())]
        argv.append(json.dumps(dataclasses.asdict(tcfg)))
        return subprocess.Popen(
            [sys.executable, str(script), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_line(proc, prefix):
        for line in proc.stdout:
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line; stderr: {proc.stderr.read()[-2000:]}")

    def latest_loads():
        step = latest_step(ckpt)
        model, meta = load_checkpoint(ckpt)  # parameters, checksum checked
        restore_into(ckpt, model, make_optimizer(model, TCFG))  # and the optimizer's state
        assert meta["step"] == step and len(meta["history"]["loss"]) == step
        return step

    # 1. SIGKILL just before step 6's folder is committed: step 3 is the latest, whole.
    proc = start("kill_before_commit", at=6)
    assert proc.wait() == -signal.SIGKILL
    assert latest_loads() == 3

    # 2. SIGKILL in the middle of the resumed run's 5th step (step 7 overall).
    proc = start("kill_in_step", at=5)
    assert proc.wait() == -signal.SIGKILL
    assert latest_loads() == 6

    # 3. SIGKILL at a random moment while a checkpoint is written after every step.
    proc = start("none", tcfg=dataclasses.replace(TCFG, ckpt_every=1))
    wait_for_line(proc, "step 1")
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    proc.kill()
    proc.wait()
    assert latest_loads() >= 6

    # 4. Resumed to the end: exactly the losses of a run never interrupted.
    proc = start("none")
    losses = json.loads(wait_for_line(proc, "losses").split(" ", 1)[1])
    assert proc.wait() == 0
    reference = fit(Transformer(cfg), examples["train"], None, TCFG, progress=False)
    assert losses == reference.loss
    assert not [p.name for p in ckpt.iterdir() if not p.name.isdigit()]  # no half-written leftovers


# ------------------------------------------------------------------------------- safe stops


def test_sigterm_finishes_the_step_saves_and_prints_how_to_resume(tmp_path, monkeypatch, capsys):
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    monkeypatch.setattr(train_mod, "train_step", _fake_step(_signal_self(signal.SIGTERM, {3})))
    out = tmp_path / "run"
    argv = ["train", "--steps", "50", "--batch-size", "4", "--out", str(out), "--no-progress"]
    assert main(argv) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 3" in err
    assert f"Resume with: python -m minids train --steps 50 --batch-size 4 --out {out}" in err
    assert err.rstrip().endswith("--resume")
    assert read_meta(out)["step"] == 3  # --ckpt-style lookup: the run folder works too
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

    # Resuming goes on from step 3 to the end.
    monkeypatch.setattr(train_mod, "train_step", _fake_step())
    history = fit(
        Transformer(load_checkpoint(out)[0].cfg),
        [{"prompt": "1+1=", "answer": "2"}] * 8,
        None,
        TrainConfig(steps=5, batch_size=4),
        ckpt_dir=out / "checkpoint",
        resume=True,
        progress=False,
    )
    assert history.step == [0, 1, 2, 3, 4] and read_meta(out)["step"] == 5


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, cfg, examples):
    calls = []

    def step(model, optimizer, batch):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C twice before the step ends
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}

    with pytest.raises(KeyboardInterrupt) as info:
        fit(Transformer(cfg), examples["train"], None, TCFG, ckpt_dir=tmp_path / "ck",
            step_fn=step, progress=False)  # fmt: skip
    assert not isinstance(info.value, Interrupted) and len(calls) == 2
    assert latest_step(tmp_path / "ck") is None  # nothing written: it stopped there


def test_without_a_checkpoint_folder_fit_installs_no_handler(cfg, examples, monkeypatch):
    seen = []

    def step(model, optimizer, batch):
        seen.append(signal.getsignal(signal.SIGINT))
        return {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}

    fit(Transformer(cfg), examples["train"], None, TCFG, step_fn=step, progress=False)
    assert set(seen) == {signal.getsignal(signal.SIGINT)}  # a notebook's Ctrl-C works as usual


def test_import_minids_changes_no_signal_handler():
    code = (
        "import signal; before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)\n"
        "import minids, minids.train, minids.checkpoint, minids.__main__\n"
        "assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_checkpoints_are_due_by_steps_or_by_minutes():
    now = [0.0]
    schedule = SaveSchedule(every_steps=100, every_minutes=5, clock=lambda: now[0])
    assert schedule.due(100) and not schedule.due(50)
    now[0] = 299.0
    assert not schedule.due(51)
    now[0] = 300.0
    assert schedule.due(51)
    schedule.saved()
    assert not schedule.due(52)
    assert not SaveSchedule(0, 0).due(100)  # both off: only the final save


def test_fit_keeps_the_last_few_checkpoints(tmp_path, cfg, examples, monkeypatch):
    tcfg = dataclasses.replace(TCFG, ckpt_every=1, ckpt_keep=2, steps=5)
    fit(Transformer(cfg), examples["train"], None, tcfg, ckpt_dir=tmp_path / "ck", progress=False,
        step_fn=_fake_step())  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["4", "5"]


# ---------------------------------------------------------------------------- never overwrite


def test_out_holding_a_run_needs_resume_or_overwrite(tmp_path, cfg, capsys):
    out = tmp_path / "run"
    save_checkpoint(out / "checkpoint", Transformer(cfg), step=7)
    (out / "notes.txt").write_text("mine")
    train = ["train", "--steps", "2", "--out", str(out), "--no-progress"]
    assert main(train) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --out {out} already holds a run (checkpoint at step 7); add --resume to continue "
        "it or --overwrite to start again"
    )
    assert main([*train, "--resume", "--overwrite"]) == 2
    assert "pick one" in capsys.readouterr().err
    for command in (["grpo", "--ckpt", str(out)], ["distill", "--teacher", str(out)]):
        assert main([*command, "--out", str(out), "--no-progress"]) == 2
        assert "--resume to continue it or --overwrite" in capsys.readouterr().err
    assert latest_step(out / "checkpoint") == 7 and (out / "notes.txt").exists()


def test_out_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--out", str(tmp_path / "afile"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file; give a folder for the run's files")
    assert main(["train", "--out", str(tmp_path / "afile" / "sub"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot create --out {tmp_path / 'afile' / 'sub'}: ")
    assert len(err.splitlines()) == 1
    assert main(["train", "--out", str(tmp_path / "new"), "--resume", "--no-progress"]) == 2
    assert "holds no checkpoint to resume from" in capsys.readouterr().err


# ---------------------------------------------------------------------------- damaged files


def _biggest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _json_item(step: Path, item: str) -> Path:
    return next(p for p in (step / item).iterdir() if not p.name.endswith(".txt"))


def _truncate(step):
    f = _biggest_file(step / "params")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_bytes(step):
    f = _biggest_file(step / "params")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _wrong_shapes(step):
    f = _json_item(step, "config")
    f.write_text(json.dumps({**json.loads(f.read_text()), "ffn_dim": 96}))


DAMAGE = {
    "truncated data file": (_truncate, "cannot read the arrays in params/"),
    "missing folder": (
        lambda s: __import__("shutil").rmtree(s / "params"),
        "params/ folder is missing",
    ),
    "cut config": (
        lambda s: _json_item(s, "config").write_text(_json_item(s, "config").read_text()[:25]),
        "config file .* is not valid JSON",
    ),
    "garbage meta": (
        lambda s: _json_item(s, "meta").write_text("\x00garbage"),
        "meta file .* is not valid JSON",
    ),
    "wrong shapes": (_wrong_shapes, "do not have the shapes its config gives"),
    "flipped bytes": (_flip_bytes, "do not match their checksum"),
}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, cfg):
    """A run folder with a checkpoint of step 3 (parameters and optimizer)."""
    run = tmp_path_factory.mktemp("saved") / "run"
    model = Transformer(cfg)
    save_checkpoint(run / "checkpoint", model, make_optimizer(model, TCFG), step=3)
    return run


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_clear_line_naming_it(tmp_path, saved_run, kind, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    damage, message = DAMAGE[kind]
    damage(run / "checkpoint" / "3")
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(run)
    assert str(info.value).startswith(
        f"checkpoint {run / 'checkpoint' / '3'} is incomplete or damaged: "
    )
    assert main(["generate", "--ckpt", str(run), "--prompt", "1+1="]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "incomplete or damaged" in err


def test_generate_restores_only_the_parameters(tmp_path, saved_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    _biggest_file(run / "checkpoint" / "3" / "opt").write_bytes(b"")  # damaged moments
    model, meta = load_checkpoint(run)
    assert meta["step"] == 3
    with pytest.raises(CheckpointError, match="opt/"):
        restore_into(run, model, make_optimizer(model, TCFG))  # resuming needs them


def test_ckpt_accepts_the_run_folder_its_checkpoint_and_one_step(saved_run, capsys):
    for path in (saved_run, saved_run / "checkpoint", saved_run / "checkpoint" / "3"):
        argv = ["generate", "--ckpt", str(path), "--prompt", "1+1=", "--max-new-tokens", "2"]
        assert main(argv) == 0
    assert capsys.readouterr().out.count("1+1=") == 3


def test_an_old_single_folder_checkpoint_still_loads(tmp_path, cfg):
    import orbax.checkpoint as ocp
    from flax import nnx

    model = Transformer(cfg)
    old = tmp_path / "old"
    with ocp.StandardCheckpointer() as checkpointer:  # the layout minids wrote before issue 22
        checkpointer.save(old / "state", {"model": nnx.state(model)})
    (old / "config.json").write_text(json.dumps(cfg.to_dict()))
    (old / "meta.json").write_text(json.dumps({"step": 4, "has_optimizer": False}))
    loaded, meta = load_checkpoint(old)
    assert meta["step"] == 4
    for a, b in zip(
        jax_leaves(nnx.state(loaded)), jax_leaves(nnx.state(model)), strict=True
    ):  # fmt: skip
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# -------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.jsonl", "", "is empty"),
        ("blank.txt", "\n\n", "is empty"),
        ("broken.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", answer: 4}\n',
         r"broken.jsonl, line 2: not valid JSON \(Expecting property name .* at column 20\)"),
        ("noanswer.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n',
         "noanswer.jsonl, line 2: missing field 'answer'"),
        ("list.jsonl", "[1, 2]\n", "row 1: expected a JSON object, got int"),
    ],
)  # fmt: skip
def test_bad_data_is_one_line_naming_the_file(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_local(tmp_path / name)
    assert main(["train", "--dataset", str(tmp_path / name), "--out", str(tmp_path / "r")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_dataset_too_small_for_one_batch_is_one_line(tmp_path, cfg, capsys):
    rows = "".join(json.dumps({"prompt": f"{i}=", "answer": "x"}) + "\n" for i in range(5))
    (tmp_path / "few.jsonl").write_text(rows)
    argv = ["train", "--dataset", str(tmp_path / "few.jsonl"), "--out", str(tmp_path / "r")]
    assert main([*argv, "--batch-size", "8"]) == 2
    assert "4 to train on after holding out 1, fewer than one batch (--batch-size 8)" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValueError, match=r"smaller than one batch \(batch_size 8\)"):
        fit(Transformer(cfg), load_local(tmp_path / "few.jsonl"), None, TrainConfig(batch_size=8))


# ---------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_quantize_keeps_nan_and_inf_in_their_own_positions(fmt):
    rng = np.random.default_rng(0)
    bad = rng.normal(size=(3, 256)).astype(np.float32)
    bad[0, 5], bad[0, 9], bad[1, 200] = np.nan, np.inf, -np.inf  # row 2 stays clean
    clean = np.where(np.isfinite(bad), bad, 0.0)  # the same tiles without the non-finite values
    q, scale = quantize(jnp.asarray(bad), fmt)
    q0, scale0 = quantize(jnp.asarray(clean), fmt)
    np.testing.assert_array_equal(np.asarray(scale), np.asarray(scale0))  # scales stay finite
    back, back0 = np.asarray(dequantize(q, scale)), np.asarray(dequantize(q0, scale0))
    hit = ~np.isfinite(bad)
    assert not np.isfinite(back[hit]).any()  # NaN (E4M3 has no inf) or the same inf (E5M2)
    np.testing.assert_array_equal(back[~hit], back0[~hit])  # the rest of each tile is exact
    if fmt == "e5m2":
        assert back[0, 9] == np.inf and back[1, 200] == -np.inf
    # A GEMM carries them into the output rows that read them, and nowhere else.
    w = jnp.asarray(rng.normal(size=(256, 4)).astype(np.float32))
    y = np.asarray(fp8_matmul(jnp.asarray(bad), w, fmt=fmt))
    y0 = np.asarray(fp8_matmul(jnp.asarray(clean), w, fmt=fmt))
    assert not np.isfinite(y[:2]).any()
    np.testing.assert_array_equal(y[2], y0[2])
    np.testing.assert_array_equal(
        np.asarray(fp8_round_trip(jnp.asarray(bad), fmt))[~hit], back0[~hit]
    )


def test_a_prompt_longer_than_max_seq_len_is_a_value_error(cfg):
    model = Transformer(cfg)
    long = [CharTokenizer.BOS] + [5] * cfg.max_seq_len  # max_seq_len + 1 tokens
    with pytest.raises(
        ValueError,
        match=rf"prompt 1 is {cfg.max_seq_len + 1} tokens long, longer than the model's max_seq_len \({cfg.max_seq_len}\)",
    ):
        generate(model, [[1, 5], long])


def test_a_vocabulary_smaller_than_the_tokenizers_is_rejected_where_they_meet(cfg):
    from flax import nnx

    small = nnx.eval_shape(lambda: Transformer(cfg.replace(vocab_size=10)))
    with pytest.raises(
        ValueError, match=r"vocab_size \(10\) is smaller than the tokenizer's \(99\)"
    ):
        generate_text(small, CharTokenizer(), ["1+1="])


# ------------------------------------------------------------------------------------- GRPO


def test_grpo_stopped_by_sigint_resumes_exactly(tmp_path, cfg):
    from minids.grpo_trainer import GRPOConfig, train_grpo

    # The model and shapes of test_grpo.py's trainer test: in a full run its compiled steps are reused.
    rows = [{"task": "add", "prompt": f"{a}+{b}=", "answer": str(a + b)}
            for a in range(10, 16) for b in (20, 31)]  # fmt: skip
    gcfg = GRPOConfig(
        steps=2, prompts_per_step=4, group_size=8, max_new_tokens=4, lr=1e-2, mu=2, beta=0.01,
        template="plain", rewards=("plain_accuracy",), reward_weights=(1.0,), eval_k=0,
    )  # fmt: skip
    model_cfg = cfg.replace(n_layers=2, max_seq_len=32)
    whole = train_grpo(Transformer(model_cfg), rows, gcfg, progress=False)

    def ctrl_c_after_step_0(step, row):
        if step == 0:
            os.kill(os.getpid(), signal.SIGINT)

    ckpt = tmp_path / "ck"
    with pytest.raises(Interrupted) as info:
        train_grpo(Transformer(model_cfg), rows, gcfg, ckpt_dir=ckpt, progress=False,
                   callback=ctrl_c_after_step_0)  # fmt: skip
    assert info.value.step == 1 and read_meta(ckpt)["step"] == 1
    resumed = train_grpo(Transformer(model_cfg), rows, gcfg, ckpt_dir=ckpt, resume=True,
                         progress=False)  # fmt: skip
    assert resumed.loss == whole.loss and resumed.reward == whole.reward and resumed.kl == whole.kl

"""`python -m minids distill`: a student from a teacher checkpoint, from the command line."""

from __future__ import annotations

import json

import pytest

from minids.__main__ import main
from minids.checkpoint import holds_checkpoint
from minids.config import preset
from minids.model import Transformer
from minids.train import save_checkpoint


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """An untrained tiny teacher: enough to exercise the command (it answers nothing correctly)."""
    path = tmp_path_factory.mktemp("teacher") / "checkpoint"
    save_checkpoint(
        path, Transformer(preset("tiny", n_layers=1, d_model=32, head_dim=8, ffn_dim=64))
    )
    return path


def test_logit_distillation_from_the_command_line(teacher_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "distill",
            "--teacher",
            str(teacher_ckpt),
            "--mode",
            "logit",
            "--task",
            "add",
            "--steps",
            "3",
            "--student-layers",
            "1",
            "--student-d-model",
            "32",
            "--eval-prompts",
            "8",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "logit" and len(metrics["history"]["loss"]) == 3
    assert set(metrics["accuracy"]) == {"teacher", "student"}
    assert holds_checkpoint(out / "checkpoint")
    assert "held-out greedy accuracy on 8 test prompts" in capsys.readouterr().out


def test_sequence_distillation_says_so_when_the_teacher_gets_nothing_right(
    teacher_ckpt, tmp_path, capsys
):
    rc = main(
        [
            "distill",
            "--teacher",
            str(teacher_ckpt),
            "--task",
            "add",
            "--prompts",
            "8",
            "--samples-per-prompt",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "no sample the checker accepts" in capsys.readouterr().err


def test_distill_help():
    with pytest.raises(SystemExit) as info:
        main(["distill", "--help"])
    assert info.value.code == 0


def test_distillation_resumes_and_refuses_to_overwrite_silently(teacher_ckpt, tmp_path, capsys):
    """A distill run stopped at step 2 continues to step 4 with --resume; the same --out without
    --resume or --overwrite is a one-line error that names both."""
    out = tmp_path / "run"
    args = [
        "distill",
        "--teacher",
        str(teacher_ckpt),
        "--mode",
        "logit",
        "--task",
        "add",
        "--student-layers",
        "1",
        "--student-d-model",
        "32",
        "--eval-prompts",
        "4",
        "--ckpt-every",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main([*args, "--steps", "2"]) == 0
    first = json.loads((out / "metrics.json").read_text())["history"]["loss"]
    capsys.readouterr()
    assert main([*args, "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert main([*args, "--steps", "4", "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())["history"]["loss"]
    assert len(resumed) == 4 and resumed[:2] == pytest.approx(first, rel=1e-6)

"""The command line: train writes a checkpoint, a loss curve and metrics; generate reads them back."""

from __future__ import annotations

import json

import pytest

from minids.__main__ import main
from minids.checkpoint import holds_checkpoint


def test_help_for_each_command(capsys):
    for argv in (["--help"], ["train", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "--ckpt" in out and "--prompt" in out


def test_train_then_generate(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--preset",
            "tiny",
            "--steps",
            "6",
            "--batch-size",
            "8",
            "--eval-every",
            "3",
            "--eval-prompts",  # scoring the whole test split would take most of the test's time
            "60",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert holds_checkpoint(out / "checkpoint")
    assert (out / "loss.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["accuracy"]) >= {"add", "sub", "sort", "rev", "count", "all"}
    assert len(metrics["history"]["loss"]) == 6
    printed = capsys.readouterr().out
    assert "held-out exact-match accuracy" in printed and "add:" in printed

    rc = main(
        [
            "generate",
            "--ckpt",
            str(out / "checkpoint"),
            "--prompt",
            "12+35=",
            "--prompt",
            "rev abc=",
            "--max-new-tokens",
            "4",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("12+35=") and lines[1].startswith("rev abc=")


def test_train_on_a_users_own_jsonl(tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i}?", "answer": str(i % 3)}) + "\n" for i in range(40))
    )
    rc = main(
        [
            "train",
            "--dataset",
            str(data),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "custom" in json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"]


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["generate", "--ckpt", str(tmp_path), "--prompt", "1+1="]) == 2
    assert "not a minids checkpoint" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(tmp_path), "--prompt", "é"]) == 2
    assert main(["train", "--steps", "0", "--out", str(tmp_path / "r")]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err
    assert main(["train", "--eval-prompts", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--eval-prompts must be at least 1" in capsys.readouterr().err

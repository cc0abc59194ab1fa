"""The `grpo` command: trains the demonstration base, runs GRPO, reports held-out accuracy; bad input
is a clear error."""

from __future__ import annotations

import json

import pytest

from minids.__main__ import main
from minids.checkpoint import holds_checkpoint


def test_grpo_help_lists_the_knobs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["grpo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--ckpt", "--group-size", "--beta", "--loss-type", "--epsilon-high", "--mu"):
        assert flag in out, flag


def test_grpo_trains_a_base_then_improves_it_from_the_command_line(tmp_path, capsys):
    base, out = tmp_path / "base", tmp_path / "run"
    rc = main(
        [
            "grpo",
            "--ckpt",
            str(base),
            "--train-base",
            "--base-steps",
            "3",
            "--steps",
            "2",
            "--prompts-per-step",
            "2",
            "--group-size",
            "2",
            "--eval-prompts",
            "4",
            "--eval-k",
            "2",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert holds_checkpoint(base) and holds_checkpoint(out / "checkpoint")
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "format_rate", "pass@2"} <= set(metrics["after"])
    assert len(metrics["history"]["reward"]) == 2 and metrics["grpo_config"]["group_size"] == 2
    printed = capsys.readouterr().out
    assert "held-out 'add'" in printed and "accuracy:" in printed

    # The checkpoint GRPO wrote is a base like any other.
    rc = main(
        [
            "grpo",
            "--ckpt",
            str(out / "checkpoint"),
            "--steps",
            "1",
            "--prompts-per-step",
            "2",
            "--group-size",
            "2",
            "--eval-prompts",
            "2",
            "--eval-k",
            "0",
            "--max-new-tokens",
            "8",
            "--out",
            str(tmp_path / "again"),
            "--no-progress",
            "--loss-type",
            "dr_grpo",
            "--scale-rewards",
            "none",
        ]
    )
    assert rc == 0


def test_grpo_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["grpo", "--ckpt", str(tmp_path), "--group-size", "1"]) == 2
    assert "group_size" in capsys.readouterr().err
    assert main(["grpo", "--ckpt", str(tmp_path), "--epsilon-high", "0"]) == 2
    assert "epsilon_high" in capsys.readouterr().err
    assert main(["grpo", "--ckpt", str(tmp_path)]) == 2
    assert "not a minids checkpoint" in capsys.readouterr().err

"""`python -m minids cost`: the calculator's table from the command line, and clear errors."""

from __future__ import annotations

import pytest

from minids.__main__ import main


def test_cost_prints_v3s_headline_numbers(capsys):
    assert main(["cost", "--preset", "deepseek_v3"]) == 0
    out = capsys.readouterr().out
    for figure in ("671.03 B", "36.63 B", "70.272 KB", "250.5 GFLOPs", "14.8T tokens"):
        assert figure in out, f"{figure!r} missing from:\n{out}"


def test_cost_options_change_the_result(capsys):
    main(["cost", "--mfu", "0.4"])
    at_40 = capsys.readouterr().out
    main(["cost", "--mfu", "0.2", "--peak", "fp8", "--tokens", "1"])
    other = capsys.readouterr().out
    assert "at 20% MFU of 1979 TFLOP/s" in other and "1.0T tokens" in other and other != at_40


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mfu", "1.5"], "mfu must be in (0, 1]"),
        (["--peak", "fast"], "--peak must be bf16 or fp8 or a number of TFLOP/s"),
    ],
)
def test_bad_options_exit_2_with_a_message(capsys, args, message):
    assert main(["cost", *args]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_preset_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["cost", "--preset", "gpt5"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_toy_preset_prints_readable_counts(capsys):
    assert main(["cost", "--preset", "tiny_v3"]) == 0
    out = capsys.readouterr().out
    assert "461,184" in out and "231,872" in out and "1.43 MFLOPs" in out and "0.00 B" not in out

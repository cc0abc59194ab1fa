"""Rule-based rewards: each documented case scores as the module docstring says, and no string, however
adversarial, makes a reward raise or return anything but its documented values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minids.data import TASKS
from minids.rewards import (
    REWARDS,
    accuracy_reward,
    add_reasoning,
    dropped_carry_sum,
    extract_answer,
    format_reward,
    get_reward,
    plain_accuracy_reward,
    r1_completion,
    r1_sft_examples,
)

EX = {"task": "add", "prompt": "47+85=", "answer": "132"}

# (completion, format reward, accuracy reward): the table in minids/rewards.py, and more.
CASES = [
    ("<think>7+5=12</think><answer>132</answer>", 1, 1),
    ("  <think></think> <answer>132</answer>\n", 1, 1),
    ("<think>7+5=12</think><answer> 132 </answer>", 1, 1),  # the checker ignores surrounding spaces
    ("<think>7+5=12</think><answer>122</answer>", 1, 0),
    ("<think></think><answer></answer>", 1, 0),  # well formed, empty: format yes, accuracy no
    ("<answer>132</answer>", 0, 1),  # no reasoning block
    ("<think>a</think><answer>132</answer>junk", 0, 1),  # text after the answer
    ("junk<think>a</think><answer>132</answer>", 0, 1),  # text before
    ("<think><think>a</think></think><answer>132</answer>", 0, 1),  # nested
    ("<think>a</think><answer>132</answer><answer>2</answer>", 0, 1),  # repeated: the first counts
    ("<think>a</think><answer>2</answer><answer>132</answer>", 0, 0),
    ("<think>a</think><answer><answer>132</answer></answer>", 0, 0),  # nested answer: "<answer>132"
    ("<answer>132</answer><think>a</think>", 0, 1),  # wrong order
    ("<think>a</think><answer>132", 0, 0),  # unclosed
    ("<think>a<answer>132</answer>", 0, 1),  # think never closed
    ("132", 0, 0),
    ("", 0, 0),
    ("<think>é</think><answer>132</answer>", 1, 1),  # non-ASCII inside is just text
    ("<think>" + "9" * 100_000 + "</think><answer>132</answer>", 1, 1),  # very long
    ("</think><think></answer><answer>", 0, 0),
]


@pytest.mark.parametrize(("completion", "fmt", "acc"), CASES, ids=[repr(c[0][:40]) for c in CASES])
def test_each_documented_case(completion, fmt, acc):
    assert format_reward(EX, completion) == fmt
    assert accuracy_reward(EX, completion) == acc


def test_plain_accuracy_grades_the_whole_completion():
    assert plain_accuracy_reward(EX, "132") == 1.0 and plain_accuracy_reward(EX, " 132\n") == 1.0
    assert plain_accuracy_reward(EX, "<answer>132</answer>") == 0.0
    assert extract_answer("<answer>1</answer>", "plain") == "<answer>1</answer>"


def test_unknown_tasks_compare_with_the_reference_answer():
    row = {"task": "custom", "prompt": "capital of France?", "answer": "Paris"}
    assert accuracy_reward(row, "<think></think><answer> Paris</answer>") == 1.0
    assert accuracy_reward(row, "<think></think><answer>Lyon</answer>") == 0.0


ADVERSARIAL = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(
            [
                "<think>",
                "</think>",
                "<answer>",
                "</answer>",
                "132",
                "<",
                ">",
                "/",
                " ",
                "\n",
                "é",
                "\x00",
                "<think",
                "answer>",
            ]
        ),
        max_size=40,
    ).map("".join),
)


@given(ADVERSARIAL)
def test_rewards_never_raise_and_score_zero_or_one(completion):
    for name, fn in REWARDS.items():
        score = fn(EX, completion)
        assert isinstance(score, float), name
        if name == "length":
            assert -1.0 <= score <= 0.0
        else:
            assert score in (0.0, 1.0), (name, completion)
    # Bad examples are a wrong answer, never a crash.
    for bad in (
        {},
        {"task": "add"},
        {"task": "add", "prompt": "x+y="},
        {"task": 3, "prompt": None},
    ):
        assert accuracy_reward(bad, completion) == 0.0


@given(ADVERSARIAL, ADVERSARIAL)
def test_format_reward_accepts_exactly_well_formed_completions(reasoning, answer):
    # Any text without angle brackets, in the template, is well formed; junk after it is not.
    reasoning, answer = (x.replace("<", "").replace(">", "") for x in (reasoning, answer))
    good = r1_completion(reasoning, answer)
    assert format_reward(EX, good) == 1.0
    assert extract_answer(good) == answer
    assert format_reward(EX, good + "x") == 0.0
    assert format_reward(EX, good.replace("</think>", "", 1)) == 0.0


def test_rewards_take_non_strings_without_raising():
    for fn in REWARDS.values():
        assert fn(EX, None) == 0.0
        assert fn(EX, 132) == 0.0


def test_get_reward_and_template_names_are_validated():
    assert get_reward("format") is format_reward
    with pytest.raises(ValueError, match="reward must be one of"):
        get_reward("vibes")
    with pytest.raises(ValueError, match="template"):
        extract_answer("x", "chatml")


def test_the_demonstration_data():
    assert add_reasoning("47+85=") == "7+5=12" and dropped_carry_sum("47+85=") == "122"
    assert dropped_carry_sum("12+34=") == "46"  # no carry: the slip is the right answer
    rows = [
        {"task": "add", "prompt": f"{a}+{b}=", "answer": str(a + b)}
        for a in range(10, 100, 7)
        for b in (15, 38)
    ]
    sft = r1_sft_examples(rows, carry_slip=1.0, no_template=0.0)
    assert all(format_reward(r, r["answer"]) == 1.0 for r in sft)
    wrong = [r for r in sft if not accuracy_reward(r, r["answer"])]
    carries = [r for r in rows if int(r["prompt"][1]) + int(r["prompt"][4]) >= 10]
    assert len(wrong) == len(carries) > 0  # every carry slipped, nothing else
    clean = r1_sft_examples(rows, carry_slip=0.0, no_template=1.0)
    assert all(TASKS["add"].check(r["prompt"], r["answer"]) for r in clean)
    assert r1_sft_examples(rows, seed=3) == r1_sft_examples(rows, seed=3)
    with pytest.raises(ValueError, match="carry_slip"):
        r1_sft_examples(rows, carry_slip=1.5)

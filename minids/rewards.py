"""Rule-based rewards for GRPO, as in DeepSeek-R1-Zero (R1 §2.2.2): a program grades every sample.

R1-Zero used no neural reward model, only two rules: an *accuracy* reward (is the final answer
right? for maths, a checker compares it with the reference) and a *format* reward (is the reasoning
inside `<think>...</think>`, followed by the answer inside `<answer>...</answer>`?). A rule cannot be
fooled the way a learned reward model can, although section 4 of notebook 04 shows that a rule
alone can still be gamed when it is the only thing rewarded.

The R1-Zero template, as minids writes it for a character-level model (no spaces around the tags):

    47+85=<think>7+5=12</think><answer>132</answer>

Every reward is a function `reward(example, completion) -> float`, where `example` is a task row
`{"task", "prompt", "answer"}` and `completion` is the decoded text after the prompt. They never
raise, whatever the completion holds (missing, nested, repeated or unclosed tags, extra text,
non-ASCII, an empty or very long string, even a non-string); a case they cannot grade scores 0.

How each case scores (see `format_reward` and `extract_answer` for the exact rules):

    completion                                            format   answer extracted
    "<think>7+5=12</think><answer>132</answer>"           1        "132"
    "  <think></think> <answer>132</answer>\n"            1        "132"  (whitespace around tags ok)
    "<answer>132</answer>"                                0        "132"  (no reasoning block)
    "<think>a</think><answer>1</answer>junk"              0        "1"    (text after the answer)
    "<think><think>a</think></think><answer>1</answer>"   0        "1"    (nested tags)
    "<think>a</think><answer>1</answer><answer>2</answer>" 0       "1"    (repeated answer: the first)
    "<think>a</think><answer>132"                         0        None   (unclosed)
    "132"                                                 0        None
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from minids.data import TASKS

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
TEMPLATES = (
    "r1",
    "plain",
)  # r1: the answer is inside <answer> tags; plain: the whole completion is

# The whole completion: a reasoning block, then an answer block, nothing else but whitespace.
_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

RewardFn = Callable[[Mapping[str, str], str], float]


def r1_completion(reasoning: str, answer: str) -> str:
    """The R1-Zero template filled in: `<think>reasoning</think><answer>answer</answer>`."""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def format_reward(example: Mapping[str, Any], completion: Any) -> float:
    """1.0 when the completion is exactly one `<think>...</think>` block then one `<answer>...</answer>`
    block, with only whitespace around them and no tag inside either block; else 0.0.

    Empty blocks are allowed: the format is about the structure, not the content (which is why the
    format reward alone can be gamed).
    """
    if not isinstance(completion, str):
        return 0.0
    match = _FORMAT.fullmatch(completion)
    if match is None:
        return 0.0
    inner = match.group(1) + match.group(2)
    return 0.0 if any(tag in inner for tag in TAGS) else 1.0


def extract_answer(completion: Any, template: str = "r1") -> str | None:
    """The answer a completion gives: with the r1 template, the text of its first closed
    `<answer>...</answer>` block (whatever else surrounds it), or None when there is none; with the
    plain template, the whole completion."""
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {list(TEMPLATES)}, got {template!r}")
    if not isinstance(completion, str):
        return None
    if template == "plain":
        return completion
    match = _ANSWER.search(completion)
    return None if match is None else match.group(1)


def _accuracy(example: Mapping[str, Any], completion: Any, template: str) -> float:
    try:
        answer = extract_answer(completion, template)
        if answer is None:
            return 0.0
        task = TASKS.get(example.get("task", ""))
        if task is not None:
            return float(task.check(example["prompt"], answer))
        return float(answer.strip() == str(example["answer"]).strip())
    except Exception:  # a malformed example or completion is a wrong answer, never a crash
        return 0.0


def accuracy_reward(example: Mapping[str, Any], completion: Any) -> float:
    """1.0 when the answer inside the first `<answer>` block passes the task's checker, else 0.0.

    A shipped task grades with its own `Task.check` (surrounding whitespace ignored); any other task
    compares the stripped answer with `example["answer"]`.
    """
    return _accuracy(example, completion, "r1")


def plain_accuracy_reward(example: Mapping[str, Any], completion: Any) -> float:
    """1.0 when the whole completion passes the task's checker (for models that answer directly)."""
    return _accuracy(example, completion, "plain")


def length_penalty(example: Mapping[str, Any], completion: Any) -> float:
    """-(characters beyond 64) / 64, at most 1 in size: an example of a reward to plug in."""
    if not isinstance(completion, str):
        return 0.0
    return -min(max(len(completion) - 64, 0) / 64, 1.0)


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "plain_accuracy": plain_accuracy_reward,
    "format": format_reward,
    "length": length_penalty,
}


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {sorted(REWARDS)}, got {name!r}")
    return REWARDS[name]


# ------------------------------------------------------------------ the demonstration's SFT data
#
# Notebook 04 needs a base model with room to improve that can already, sometimes, sample the right
# answer (RL can only reinforce what the policy samples). It gets one by supervised training on
# two-digit additions written in the R1-Zero template, where the answer drops the carry in a share
# `carry_slip` of the examples that have one, and a share `no_template` is the bare answer. The
# model learns the slip as its most likely answer (greedy decoding is wrong on most carries) while
# still giving the right one a fair probability; GRPO, rewarded only by the checker, has to find it.


def add_reasoning(prompt: str) -> str:
    """The ones column of a two-digit addition, as a short scratchpad: "47+85=" -> "7+5=12"."""
    a, b = prompt.rstrip("=").split("+")
    return f"{a[-1]}+{b[-1]}={int(a[-1]) + int(b[-1])}"


def dropped_carry_sum(prompt: str) -> str:
    """The classic slip: add the tens without the carry from the ones. "47+85=" -> "122"."""
    a, b = (int(x) for x in prompt.rstrip("=").split("+"))
    ones = (a % 10 + b % 10) % 10
    return str((a // 10 + b // 10) * 10 + ones)


def r1_sft_examples(
    rows: Sequence[Mapping[str, str]],
    *,
    carry_slip: float = 0.6,
    no_template: float = 0.2,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Two-digit addition rows rewritten as R1-Zero completions for supervised training, with the
    flaws described above, drawn from `seed`: `{"task", "prompt", "answer"}` where answer is, e.g.,
    `<think>7+5=12</think><answer>122</answer>` (a slip) or the bare `132`."""
    for name, value in (("carry_slip", carry_slip), ("no_template", no_template)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    rng = random.Random(seed)
    out = []
    for row in rows:
        if row.get("task") != "add":
            raise ValueError(
                f"r1_sft_examples needs rows of the 'add' task, got task {row.get('task')!r}"
            )
        prompt = row["prompt"]
        slip = rng.random() < carry_slip
        answer = dropped_carry_sum(prompt) if slip else TASKS["add"].solve(prompt)
        bare = rng.random() < no_template
        out.append(
            {
                "task": "add",
                "prompt": prompt,
                "answer": answer if bare else r1_completion(add_reasoning(prompt), answer),
            }
        )
    return out

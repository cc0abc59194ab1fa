"""Data: a character tokenizer, seeded generators of verifiable tasks, the shipped splits, batching.

Every example is a `(prompt, answer)` pair from a task that can also *check* an answer. Training
learns `prompt -> answer`; evaluation and, later, GRPO's rule-based rewards (DeepSeek-R1 §2.2.2) call
the same `Task.check`. The tasks are small on purpose, and different in kind (arithmetic, sorting,
reversing, counting), so that later notebooks can watch MoE experts specialise by task.

    add    "47+85="        -> "132"     two-digit addition, carries included
    sub    "85-47="        -> "38"      two-digit subtraction with a non-negative result
    sort   "sort 30817="   -> "01378"   sort five digits
    rev    "rev kqzta="    -> "atzqk"   reverse five letters
    count  "count a abca=" -> "2"       how often a letter occurs in eight letters

`python -m minids.data` regenerates `data/{train,val,test}.jsonl` bit for bit from a seed. Each task's
prompts are drawn without repetition and then split, so no prompt appears in two splits. Installed
without its repository (`pip install .` or from a wheel), minids has no `data/` beside it: it then
writes the same splits once into a cache folder and reads them from there (`shipped_data_dir`). Files are
read back through Hugging Face `datasets` (`load_dataset("json")`, local files, no network); a user's
own local `.jsonl` (with `prompt`/`answer` fields, or `text`) or `.txt` file can be used instead.

A sequence is `[BOS] prompt answer [EOS]`, right-padded with PAD. The loss covers the answer and the
EOS only: the model is never asked to predict a random prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import string
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPLITS = ("train", "val", "test")


class CharTokenizer:
    """One id per character of printable ASCII (plus newline), after three special tokens."""

    PAD, BOS, EOS = 0, 1, 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")
    ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))

    def __init__(self) -> None:
        self._id = {ch: i + len(self.SPECIALS) for i, ch in enumerate(self.ALPHABET)}

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.ALPHABET)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = []
        for pos, ch in enumerate(text):
            if ch not in self._id:
                raise ValueError(
                    f"character {ch!r} at position {pos} of {text[:40]!r} is not in the tokenizer's "
                    "alphabet (printable ASCII and newline)"
                )
            ids.append(self._id[ch])
        return [self.BOS] * bos + ids + [self.EOS] * eos

    def decode(self, ids: Iterable[int] | np.ndarray, *, stop_at_eos: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.EOS and stop_at_eos:
                break
            if i >= len(self.SPECIALS) and i < self.vocab_size:
                out.append(self.ALPHABET[i - len(self.SPECIALS)])
        return "".join(out)


# ----------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """A verifiable task: `make(rng)` gives (prompt, answer); `check(prompt, answer)` grades one."""

    name: str
    make: Callable[[random.Random], tuple[str, str]]
    solve: Callable[[str], str]  # the exact answer for a prompt of this task

    def check(self, prompt: Any, answer: Any) -> bool:
        """True when `answer` is exactly right (surrounding whitespace ignored). Never raises."""
        try:
            return answer.strip() == self.solve(prompt)
        except Exception:
            return False


def _two_digit(rng: random.Random) -> int:
    return rng.randint(10, 99)


def _make_add(rng):
    a, b = _two_digit(rng), _two_digit(rng)
    return f"{a}+{b}=", str(a + b)


def _solve_add(prompt):
    a, b = prompt.rstrip("=").split("+")
    return str(int(a) + int(b))


def _make_sub(rng):
    a, b = sorted((_two_digit(rng), _two_digit(rng)), reverse=True)
    return f"{a}-{b}=", str(a - b)


def _solve_sub(prompt):
    a, b = prompt.rstrip("=").split("-")
    return str(int(a) - int(b))


def _make_sort(rng):
    digits = "".join(rng.choice(string.digits) for _ in range(5))
    return f"sort {digits}=", "".join(sorted(digits))


def _make_rev(rng):
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
    return f"rev {letters}=", letters[::-1]


def _make_count(rng):
    alphabet = "abcd"  # few letters, so counts from 0 to 8 all occur
    letters = "".join(rng.choice(alphabet) for _ in range(8))
    target = rng.choice(alphabet)
    return f"count {target} {letters}=", str(letters.count(target))


def _solve_count(prompt):
    _, target, letters = prompt.rstrip("=").split(" ")
    return str(letters.count(target))


TASKS: dict[str, Task] = {
    "add": Task("add", _make_add, _solve_add),
    "sub": Task("sub", _make_sub, _solve_sub),
    "sort": Task("sort", _make_sort, lambda p: "".join(sorted(p.split(" ")[1].rstrip("=")))),
    "rev": Task("rev", _make_rev, lambda p: p.split(" ")[1].rstrip("=")[::-1]),
    "count": Task("count", _make_count, _solve_count),
}

# Examples per task and split. The arithmetic tasks get more training examples: they are the hard ones.
# (Two-digit addition has 8100 distinct prompts and subtraction 4095, so these sizes fit.)
DEFAULT_SIZES: dict[str, int | dict[str, int]] = {
    "train": {"add": 6000, "sub": 3300, "sort": 2000, "rev": 2000, "count": 2000},
    "val": 200,
    "test": 500,
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def generate_splits(
    seed: int = 0,
    sizes: dict[str, int | dict[str, int]] | None = None,
    tasks: Sequence[str] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Examples {"task", "prompt", "answer"} per split; prompts are unique across all splits.

    `sizes` maps each split to a count per task: one int for every task, or a dict task -> int.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    tasks = list(TASKS) if tasks is None else list(tasks)
    if set(sizes) != set(SPLITS):
        raise ValueError(f"sizes must have exactly the keys {SPLITS}, got {sorted(sizes)}")
    per_task = {
        split: n if isinstance(n, dict) else dict.fromkeys(tasks, n) for split, n in sizes.items()
    }
    for split, counts in per_task.items():
        if any(not isinstance(counts.get(t), int) or counts[t] < 0 for t in tasks):
            raise ValueError(
                f"sizes[{split!r}] must give a non-negative int for each task {tasks}, got {counts!r}"
            )
    splits: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for t_index, name in enumerate(tasks):
        task = get_task(name)
        rng = random.Random(seed * 1_000_003 + t_index)
        want, seen, pool = sum(per_task[s][name] for s in SPLITS), set(), []
        for _ in range(want * 50):  # draws without repetition
            prompt, answer = task.make(rng)
            if prompt not in seen:
                seen.add(prompt)
                pool.append({"task": name, "prompt": prompt, "answer": answer})
                if len(pool) == want:
                    break
        if len(pool) < want:
            raise ValueError(
                f"task {name!r} has only {len(pool)} distinct prompts, {want} requested"
            )
        start = 0
        for split in SPLITS:
            splits[split].extend(pool[start : start + per_task[split][name]])
            start += per_task[split][name]
    for split in SPLITS:
        random.Random(seed * 7919 + SPLITS.index(split)).shuffle(splits[split])
    return splits


def write_splits(out_dir: Path | str = DATA_DIR, seed: int = 0, sizes=None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, rows in generate_splits(seed, sizes).items():
        path = out_dir / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------- loading


def shipped_data_dir() -> Path:
    """The folder that holds the shipped splits.

    From a clone (`pip install -e .`, the README's set-up) that is the repository's `data/`. An
    install without the repository has none, so the splits are written once, from seed 0 as
    `python -m minids.data` writes them (the same bytes: tests/test_data.py), into
    `$MINIDS_DATA_CACHE` or `~/.cache/minids/`, in a folder named by a hash of this file, so that
    a minids whose generators changed never reads another's cache. Nothing is downloaded.
    """
    if all((DATA_DIR / f"{split}.jsonl").exists() for split in SPLITS):
        return DATA_DIR
    root = (
        os.environ.get("MINIDS_DATA_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minids"
    )
    cache = Path(root) / f"data-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"
    if not all((cache / f"{split}.jsonl").exists() for split in SPLITS):
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            for path in write_splits(tmp, seed=0):  # then moved in whole: never a half-written file
                os.replace(path, cache / path.name)
    return cache


def load_split(split: str, data_dir: Path | str | None = None) -> list[dict[str, str]]:
    """The shipped examples of one split, read through Hugging Face `datasets` (no network).

    `data_dir` defaults to `shipped_data_dir()`: the repository's `data/`, or its cached copy.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return load_local(Path(data_dir or shipped_data_dir()) / f"{split}.jsonl")


def load_local(path: Path | str) -> list[dict[str, str]]:
    """A user's local dataset: `.jsonl` with prompt/answer (or text) fields, or a `.txt` file.

    Rows become {"task", "prompt", "answer"}; plain text becomes rows with an empty prompt, so the
    model learns every character. Bad data is a `ValueError` naming the file (and the line): an
    empty file, a line that is not JSON, a row without the fields.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset path {str(path)!r} does not exist")
    if path.suffix not in (".jsonl", ".json", ".txt"):
        raise ValueError(f"dataset path must end in .jsonl, .json or .txt, got {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"dataset path {str(path)!r} is not a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"dataset {path} cannot be read as text: {err}") from None
    if not text.strip():
        raise ValueError(f"dataset {path} is empty")
    if path.suffix == ".txt":
        rows = [
            {"task": "text", "prompt": "", "answer": t} for t in _read_with_datasets(path, "text")
        ]
        return [r for r in rows if r["answer"]]
    _check_json_rows(path, text)
    ds = _read_with_datasets(path, "json")
    cols = set(ds.column_names)
    if {"prompt", "answer"} <= cols:
        tasks = ds["task"] if "task" in cols else ["custom"] * len(ds)
        return _require_strings(
            path,
            [
                {"task": t, "prompt": p, "answer": a}
                for t, p, a in zip(tasks, ds["prompt"], ds["answer"], strict=True)
            ],
        )
    if "text" in cols:
        return _require_strings(
            path, [{"task": "text", "prompt": "", "answer": t} for t in ds["text"]]
        )
    raise ValueError(
        f"{path} needs 'prompt' and 'answer' fields, or a 'text' field; has {sorted(cols)}"
    )


def _check_json_rows(path: Path, text: str) -> None:
    """Each row must be a JSON object with string `prompt` and `answer` (or `text`) fields; the
    first that is not is reported with its line number (Hugging Face's error gives neither)."""
    try:  # a .json file may hold one array of rows
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        where, rows = "row", list(enumerate(whole, 1))
    else:  # JSON lines: one object per line
        where, rows = "line", []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}, line {lineno}: not valid JSON ({err.msg} at column {err.colno})"
                    ) from None
    if not rows:
        raise ValueError(f"dataset {path} holds no rows")
    fields = None
    for n, row in rows:
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}, {where} {n}: expected a JSON object, got {type(row).__name__}"
            )
        if fields is None:  # the first row decides: prompt/answer, or text
            fields = ("text",) if "text" in row and "prompt" not in row else ("prompt", "answer")
        for name in fields:
            if name not in row:
                raise ValueError(
                    f"{path}, {where} {n}: missing field {name!r} (every row needs "
                    "'prompt' and 'answer', or 'text')"
                )
            if not isinstance(row[name], str):
                raise ValueError(
                    f"{path}, {where} {n}: row {n - 1} has a non-string {name!r} field: "
                    f"{row[name]!r}"
                )


def _read_with_datasets(path: Path, kind: str):
    """The file through Hugging Face `datasets` (local, no network), any failure one clear line."""
    import datasets  # imported here: it is slow to import and only needed for loading

    # No progress bar for a small local file; the user's own setting is restored afterwards, as
    # datasets' switch is global.
    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # datasets wraps the reader's error in its own
        cause = err.__cause__ or err
        line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        raise ValueError(f"dataset {path} cannot be read: {line}") from None
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
    return ds["text"] if kind == "text" else ds


def _require_strings(path: Path, rows: list[dict]) -> list[dict[str, str]]:
    """Rows whose prompt and answer are text; a number or a missing value is a clear error here,
    not a TypeError deep inside the tokenizer."""
    if not rows:
        raise ValueError(f"dataset {path} holds no rows")
    for i, row in enumerate(rows):
        for name in ("prompt", "answer"):
            if not isinstance(row[name], str):
                raise ValueError(f"{path}: row {i} has a non-string {name!r} field: {row[name]!r}")
    return rows


def check_vocab(vocab_size: int, tokenizer: CharTokenizer | None = None) -> None:
    """A model must have an embedding for every token id the tokenizer can produce."""
    need = (tokenizer or CharTokenizer()).vocab_size
    if vocab_size < need:
        raise ValueError(
            f"model vocab_size ({vocab_size}) is smaller than the tokenizer's ({need}): "
            f"token ids up to {need - 1} would have no embedding; use vocab_size >= {need}"
        )


# -------------------------------------------------------------------------------------- batching


def encode_examples(
    examples: Sequence[dict[str, str]], tokenizer: CharTokenizer, seq_len: int
) -> dict[str, np.ndarray]:
    """Arrays for training: inputs (B, T), targets (B, T) shifted by one, and a loss mask (B, T).

    Long texts (prompt + answer + 2 specials > seq_len + 1) raise `ValueError`; the shipped tasks fit.
    """
    n = len(examples)
    tokens = np.full((n, seq_len + 1), tokenizer.PAD, dtype=np.int32)
    answer_mask = np.zeros((n, seq_len + 1), dtype=bool)
    for i, ex in enumerate(examples):
        p = tokenizer.encode(ex["prompt"], bos=True)
        a = tokenizer.encode(ex["answer"], eos=True)
        if len(p) + len(a) > seq_len + 1:
            raise ValueError(
                f"example {i} ({ex['prompt'][:30]!r}...) is {len(p) + len(a)} tokens long; "
                f"seq_len {seq_len} fits at most {seq_len + 1}. Raise max_seq_len or shorten it"
            )
        tokens[i, : len(p) + len(a)] = p + a
        answer_mask[i, len(p) : len(p) + len(a)] = True
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": answer_mask[:, 1:].astype(np.float32),
    }


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The examples of training step `step`: a function of (seed, step) alone, so resuming replays."""
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples ({n})")
    return np.random.default_rng([seed, step]).choice(n, size=batch_size, replace=False)


# ------------------------------------------------------------------------- long-context retrieval
#
# Two generated tasks whose answer depends on a few characters far back, at any length from about
# 32 to several thousand tokens (one character is one token). They are not among the shipped splits
# (`TASKS`): they are made on the fly, at the length an experiment needs (notebook 09, DSA and YaRN).
#
#   kv       "ab=3917;cx=0412;...;qe=7730?cx="        -> "0412"   the value stored under a key
#   passkey  "....k5281....?"                         -> "5281"   the only digits in the filler
#
# Each checker re-solves the prompt (`Task.check`), so GRPO can use it as a reward as it is:
# `kv_retrieval_task().check(prompt, completion)`, or `minids.rewards.plain_accuracy_reward` with
# the example's "answer".

LONG_TASK_MAX_LEN = 5000  # 26 * 26 two-letter keys of 8 characters each fill about 5400


def _kv_pairs(prompt: str) -> tuple[dict[str, str], str]:
    body, query = prompt.rstrip("=").rsplit("?", 1)
    return dict(pair.split("=") for pair in body.split(";")), query


def kv_retrieval_example(
    rng: random.Random, length: int, depth: float | None = None
) -> tuple[str, str]:
    """A `length`-character (about) prompt of key=value pairs, asking for one key's value.

    `depth` in [0, 1] puts the asked pair at that fraction of the way through (0: first pair);
    None draws it uniformly.
    """
    n_pairs = max(2, (length - 4) // 8)  # "ab=1234;" is 8 characters; "?ab=" ends the prompt
    keys = rng.sample(
        [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase], n_pairs
    )
    values = [f"{rng.randrange(10_000):04d}" for _ in keys]
    where = rng.randrange(n_pairs) if depth is None else min(int(depth * n_pairs), n_pairs - 1)
    body = ";".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    return f"{body}?{keys[where]}=", values[where]


def passkey_example(
    rng: random.Random, length: int, depth: float | None = None, digits: int = 4
) -> tuple[str, str]:
    """`length` characters of random lowercase filler with "k" + `digits` digits hidden at `depth`."""
    key = "".join(rng.choice(string.digits) for _ in range(digits))
    filler = "".join(rng.choice(string.ascii_lowercase) for _ in range(max(0, length - digits - 2)))
    where = rng.randrange(len(filler) + 1) if depth is None else int(depth * len(filler))
    return f"{filler[:where]}k{key}{filler[where:]}?", key


def _solve_passkey(prompt: str) -> str:
    digits = "".join(ch for ch in prompt if ch.isdigit())  # the filler has none
    if not digits:
        raise ValueError("no passkey in the prompt")
    return digits


def kv_retrieval_task(length: int = 128, depth: float | None = None) -> Task:
    """The key-value retrieval task at one length (and depth), with its checker."""
    _check_long_length(length)
    return Task(
        f"kv{length}",
        lambda rng: kv_retrieval_example(rng, length, depth),
        lambda prompt: _kv_pairs(prompt)[0][_kv_pairs(prompt)[1]],
    )


def passkey_task(length: int = 128, depth: float | None = None, digits: int = 4) -> Task:
    """The passkey task at one length (and depth), with its checker."""
    _check_long_length(length)
    return Task(
        f"passkey{length}",
        lambda rng: passkey_example(rng, length, depth, digits),
        _solve_passkey,
    )


def _check_long_length(length: int) -> None:
    if (
        isinstance(length, bool)
        or not isinstance(length, int)
        or not 16 <= length <= LONG_TASK_MAX_LEN
    ):
        raise ValueError(f"length must be an int in [16, {LONG_TASK_MAX_LEN}], got {length!r}")


def long_context_examples(task: Task, n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` examples {"task", "prompt", "answer"} of a long-context task, from a seed."""
    rng = random.Random(seed)
    return [
        {"task": task.name, "prompt": p, "answer": a} for p, a in (task.make(rng) for _ in range(n))
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m minids.data",
        description="Regenerate the shipped task datasets (data/{train,val,test}.jsonl) from a seed.",
    )
    parser.add_argument("--out", default=str(DATA_DIR), help="output folder (default: data/)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    for path in write_splits(args.out, args.seed):
        print(f"wrote {path} ({sum(1 for _ in path.open())} examples)")


if __name__ == "__main__":
    main()

"""Data: the tokenizer, the verifiable tasks, the shipped splits, local files, encoding and batching."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minids.data
from minids.config import PRESETS
from minids.data import (
    DATA_DIR,
    SPLITS,
    TASKS,
    CharTokenizer,
    batch_indices,
    encode_examples,
    generate_splits,
    get_task,
    load_local,
    load_split,
    main,
    shipped_data_dir,
)

TOK = CharTokenizer()
printable = st.text(
    alphabet="".join(chr(c) for c in range(32, 127)) + "\n"
)  # printable ASCII, newline
outside_alphabet = st.characters(exclude_characters=CharTokenizer.ALPHABET)


def _read_jsonl(path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[dict[str, str]]]:
    return {split: _read_jsonl(DATA_DIR / f"{split}.jsonl") for split in SPLITS}


# ------------------------------------------------------------------------------------- tokenizer


@given(printable)
def test_decode_inverts_encode_for_any_printable_ascii_string(text):
    assert TOK.decode(TOK.encode(text)) == text


@given(printable)
def test_bos_and_eos_wrap_the_text_and_decode_drops_them(text):
    ids = TOK.encode(text, bos=True, eos=True)
    assert ids[0] == TOK.BOS and ids[-1] == TOK.EOS and len(ids) == len(text) + 2
    assert TOK.decode(ids) == text


def test_decode_stops_at_eos_unless_asked_not_to_and_skips_padding():
    ids = [TOK.BOS] + TOK.encode("ab", eos=True) + TOK.encode("cd") + [TOK.PAD, TOK.PAD]
    assert TOK.decode(ids) == "ab"
    assert TOK.decode(ids, stop_at_eos=False) == "abcd"


def test_special_tokens_come_first_and_the_vocabulary_fits_every_preset():
    assert (TOK.PAD, TOK.BOS, TOK.EOS) == (0, 1, 2)
    ids = TOK.encode(CharTokenizer.ALPHABET)
    assert sorted(ids) == list(range(3, TOK.vocab_size))  # one id per character, none special
    assert all(TOK.vocab_size <= cfg.vocab_size for cfg in PRESETS.values())


@pytest.mark.parametrize("char", ["é", "\t", "\r", "€", "\x00"])
def test_unknown_characters_raise_value_error_naming_the_character(char):
    with pytest.raises(ValueError, match="alphabet") as err:
        TOK.encode(f"12{char}34")
    assert repr(char) in str(err.value) and "position 2" in str(err.value)


@given(printable, outside_alphabet)
def test_any_character_outside_the_alphabet_is_rejected(text, char):
    with pytest.raises(ValueError) as err:
        TOK.encode(text + char)
    assert repr(char) in str(err.value)


# ----------------------------------------------------------------------------------------- tasks

DOCUMENTED = [  # the examples in minids/data.py's docstring
    ("add", "47+85=", "132"),
    ("sub", "85-47=", "38"),
    ("sort", "sort 30817=", "01378"),
    ("rev", "rev kqzta=", "atzqk"),
    ("count", "count a abca=", "2"),
]


@pytest.mark.parametrize("task, prompt, answer", DOCUMENTED)
def test_check_accepts_the_right_answer_with_surrounding_whitespace(task, prompt, answer):
    assert TASKS[task].check(prompt, answer)
    assert TASKS[task].check(prompt, f" {answer}\n")


@pytest.mark.parametrize("task, prompt, answer", DOCUMENTED)
def test_check_rejects_wrong_answers(task, prompt, answer):
    check = TASKS[task].check
    wrong = [
        answer[:-1],
        answer + answer[-1],
        answer[::-1] if answer != answer[::-1] else "x",
        "",
        "0" + answer,
        answer.replace(answer[0], "9" if answer[0] != "9" else "8"),
    ]
    for w in wrong:
        assert not check(prompt, w), f"{task}: {prompt!r} accepted the wrong answer {w!r}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generated_examples_pass_their_own_check(name):
    rows = generate_splits(seed=3, sizes={"train": 50, "val": 0, "test": 0}, tasks=[name])["train"]
    assert len(rows) == 50 and all(TASKS[name].check(r["prompt"], r["answer"]) for r in rows)


@given(st.sampled_from(sorted(TASKS)), st.text(), st.one_of(st.text(), st.none(), st.integers()))
def test_check_never_raises_on_garbage(name, prompt, answer):
    assert TASKS[name].check(prompt, answer) in (True, False)


def test_get_task_rejects_unknown_names():
    assert get_task("add") is TASKS["add"]
    with pytest.raises(ValueError, match="'mul'"):
        get_task("mul")


# -------------------------------------------------------------------------------- shipped splits


def test_shipped_splits_are_disjoint_by_prompt(shipped):
    prompts = {split: [r["prompt"] for r in rows] for split, rows in shipped.items()}
    for split, ps in prompts.items():
        assert len(ps) == len(set(ps)) > 0, f"{split} repeats a prompt"
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            shared = set(prompts[a]) & set(prompts[b])
            assert not shared, (
                f"{len(shared)} prompts in both {a} and {b}, e.g. {sorted(shared)[:3]}"
            )


def test_every_shipped_answer_passes_its_tasks_check(shipped):
    for split, rows in shipped.items():
        for r in rows:
            assert TASKS[r["task"]].check(r["prompt"], r["answer"]), f"{split}: {r}"
        assert {r["task"] for r in rows} == set(TASKS), f"{split} misses a task"


def test_regenerating_with_seed_0_reproduces_data_bit_for_bit(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "0"])  # what `python -m minids.data` runs
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (
            DATA_DIR / f"{split}.jsonl"
        ).read_bytes(), f"data/{split}.jsonl differs from what `python -m minids.data` generates"
    assert "wrote" in capsys.readouterr().out


def test_generate_splits_is_a_function_of_the_seed():
    sizes = {"train": 20, "val": 5, "test": 5}
    assert generate_splits(1, sizes) == generate_splits(1, sizes)
    assert generate_splits(1, sizes) != generate_splits(2, sizes)


@pytest.mark.parametrize(
    "sizes, tasks, match",
    [
        ({"train": 5, "val": 5}, None, "keys"),
        ({"train": 5, "val": -1, "test": 5}, None, "non-negative"),
        ({"train": {"add": 5}, "val": 1, "test": 1}, ["add", "rev"], "each task"),
        ({"train": 4096, "val": 0, "test": 0}, ["sub"], "distinct prompts"),
        ({"train": 1, "val": 1, "test": 1}, ["mul"], "'mul'"),
    ],
)
def test_generate_splits_rejects_bad_sizes_and_tasks(sizes, tasks, match):
    with pytest.raises(ValueError, match=match):
        generate_splits(0, sizes, tasks)


def test_load_split_reads_the_shipped_file_through_datasets(shipped):
    assert load_split("val") == shipped["val"]
    with pytest.raises(ValueError, match="split"):
        load_split("dev")


@pytest.mark.parametrize("bars_off", [False, True])
def test_loading_a_file_leaves_the_users_progress_bar_setting_alone(tmp_path, bars_off):
    """minids silences datasets' progress bar while it reads a small file, and only then: the
    switch is global to the process, so the user's own setting comes back either way."""
    import datasets

    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    was_off = datasets.are_progress_bars_disabled()
    try:
        (datasets.disable_progress_bars if bars_off else datasets.enable_progress_bars)()
        assert load_local(path) == [{"task": "custom", "prompt": "1+1=", "answer": "2"}]
        assert datasets.are_progress_bars_disabled() == bars_off
    finally:
        (datasets.disable_progress_bars if was_off else datasets.enable_progress_bars)()


def test_without_the_repositorys_data_the_splits_are_regenerated_once_into_the_cache(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(minids.data, "DATA_DIR", tmp_path / "not-installed")  # as in site-packages
    monkeypatch.setenv("MINIDS_DATA_CACHE", str(tmp_path / "cache"))
    folder = shipped_data_dir()
    assert folder.parent == tmp_path / "cache"
    for split in SPLITS:
        assert (folder / f"{split}.jsonl").read_bytes() == (
            DATA_DIR / f"{split}.jsonl"
        ).read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{split}.jsonl" for split in SPLITS)
    # the second time reads the cache and generates nothing
    monkeypatch.setattr(minids.data, "generate_splits", lambda *a, **k: pytest.fail("regenerated"))
    assert shipped_data_dir() == folder
    assert load_split("test")[:3] == _read_jsonl(DATA_DIR / "test.jsonl")[:3]


def test_a_plain_install_without_the_repository_loads_the_shipped_splits(tmp_path):
    """`pip install .` puts the package alone in site-packages; a copy of `minids/` stands in for it."""
    site = tmp_path / "site"
    shutil.copytree(
        Path(minids.data.__file__).parent,
        site / "minids",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    probe = (
        "import minids.data as d, json; assert not d.DATA_DIR.exists(), d.DATA_DIR; "
        "print(json.dumps(d.load_split('val')[:5]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site), "MINIDS_DATA_CACHE": str(tmp_path / "cache")},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == _read_jsonl(DATA_DIR / "val.jsonl")[:5]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir())[0].startswith("data-")


# ------------------------------------------------------------------------------------ local files


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_local_reads_prompt_answer_jsonl(tmp_path):
    rows = [
        {"prompt": "2+2=", "answer": "4", "task": "add"},
        {"prompt": "hi ", "answer": "you", "task": "chat"},
    ]
    assert load_local(_write_jsonl(tmp_path / "qa.jsonl", rows)) == rows
    no_task = [{"prompt": "a", "answer": "b"}]
    assert load_local(_write_jsonl(tmp_path / "qa2.jsonl", no_task)) == [
        {"task": "custom", "prompt": "a", "answer": "b"}
    ]


def test_load_local_reads_text_jsonl_and_txt_as_answers_with_empty_prompts(tmp_path):
    expected = [{"task": "text", "prompt": "", "answer": t} for t in ("hello world", "second line")]
    rows = [{"text": "hello world"}, {"text": "second line"}]
    assert load_local(_write_jsonl(tmp_path / "t.jsonl", rows)) == expected
    (tmp_path / "t.txt").write_text("hello world\n\nsecond line\n")
    assert load_local(tmp_path / "t.txt") == expected  # blank lines are dropped


def test_load_local_rejects_a_missing_path_a_bad_suffix_and_missing_fields(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_local(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("prompt,answer\n1+1=,2\n")
    with pytest.raises(ValueError, match=r"\.jsonl"):
        load_local(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="'prompt' and 'answer'"):
        load_local(_write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1=", "answer": "2"}]))


def test_load_local_rejects_fields_that_are_not_text(tmp_path):
    with pytest.raises(ValueError, match="row 0 has a non-string 'answer'"):
        load_local(_write_jsonl(tmp_path / "n.jsonl", [{"prompt": "1+1=", "answer": 2}] * 2))
    with pytest.raises(ValueError, match="row 0 has a non-string 'prompt'"):
        load_local(_write_jsonl(tmp_path / "m.jsonl", [{"prompt": None, "answer": "2"}]))


# -------------------------------------------------------------------------------------- encoding


def test_encode_examples_lays_out_bos_prompt_answer_eos_and_masks_only_answer_and_eos():
    arrays = encode_examples([{"prompt": "12+3=", "answer": "15"}], TOK, seq_len=10)
    inputs, targets, mask = arrays["inputs"][0], arrays["targets"][0], arrays["loss_mask"][0]
    tokens = TOK.encode("12+3=", bos=True) + TOK.encode("15", eos=True)  # 9 tokens
    np.testing.assert_array_equal(inputs, tokens + [TOK.PAD])
    np.testing.assert_array_equal(targets, tokens[1:] + [TOK.PAD] * 2)
    np.testing.assert_array_equal(mask, [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])  # targets "1", "5", EOS
    assert arrays["loss_mask"].dtype == np.float32 and inputs.dtype == np.int32


@given(st.lists(st.tuples(printable, printable), min_size=1, max_size=4), st.integers(0, 5))
def test_encode_examples_targets_under_the_mask_are_exactly_the_answer_and_eos(pairs, slack):
    seq_len = max(len(p) + len(a) for p, a in pairs) + 1 + slack  # fits with `slack` to spare
    examples = [{"prompt": p, "answer": a} for p, a in pairs]
    arrays = encode_examples(examples, TOK, seq_len)
    assert arrays["inputs"].shape == arrays["targets"].shape == (len(pairs), seq_len)
    np.testing.assert_array_equal(arrays["inputs"][:, 1:], arrays["targets"][:, :-1])
    for i, (p, a) in enumerate(pairs):
        masked = arrays["targets"][i][arrays["loss_mask"][i] == 1]
        assert masked.tolist() == TOK.encode(a, eos=True)
        assert arrays["inputs"][i, 0] == TOK.BOS
        assert TOK.decode(arrays["inputs"][i]) == p + a


def test_encode_examples_rejects_an_example_longer_than_the_model_sees():
    encode_examples([{"prompt": "abcd", "answer": "efg"}], TOK, seq_len=8)  # 9 tokens: fits exactly
    with pytest.raises(ValueError, match="max_seq_len"):
        encode_examples([{"prompt": "abcd", "answer": "efgh"}], TOK, seq_len=8)


# -------------------------------------------------------------------------------------- batching


@given(st.integers(1, 200), st.integers(0, 2**32 - 1), st.integers(0, 10**6), st.data())
def test_batch_indices_are_distinct_in_range_and_a_function_of_seed_and_step(n, seed, step, data):
    batch = data.draw(st.integers(1, n))
    idx = batch_indices(n, batch, step, seed)
    assert idx.shape == (batch,) and len(set(idx.tolist())) == batch
    assert idx.min() >= 0 and idx.max() < n
    np.testing.assert_array_equal(idx, batch_indices(n, batch, step, seed))


def test_batch_indices_change_with_the_step_and_the_seed():
    a = batch_indices(1000, 16, step=5, seed=0)
    assert not np.array_equal(a, batch_indices(1000, 16, step=6, seed=0))
    assert not np.array_equal(a, batch_indices(1000, 16, step=5, seed=1))


def test_batch_indices_rejects_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(4, 5, step=0, seed=0)

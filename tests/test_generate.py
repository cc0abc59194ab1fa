"""Generation: cached == recomputed, batching is invisible, per-sequence EOS, seeded sampling, bad input.

The model is untrained, so its greedy continuations are arbitrary but deterministic: exactly what a
test of the decoding machinery needs. Every call uses 8 new tokens and prompts of at most 8 tokens
(one left-padded width), so the jitted loops compile a handful of times for the whole file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import minids.generate as gen_mod
from minids.data import CharTokenizer
from minids.generate import (
    generate,
    generate_recompute,
    generate_text,
    sample_logits,
    task_accuracy,
)
from minids.model import Transformer

NEW = 8
PAD, EOS = CharTokenizer.PAD, CharTokenizer.EOS
PROMPTS = [[1, 20, 30], [1, 40, 41, 42, 43, 44, 45], [1, 50, 51, 52, 53]]  # lengths 3, 7, 5


@pytest.fixture(scope="module")
def model(cfg):
    return Transformer(cfg)


@pytest.fixture(scope="module")
def greedy(model):
    """Greedy continuations of PROMPTS with an EOS id the model never emits (no early stop)."""
    return generate(model, PROMPTS, max_new_tokens=NEW, eos_id=-1)


def test_generation_has_one_row_per_prompt(greedy):
    assert greedy.tokens.shape == (3, NEW) and greedy.logprobs.shape == (3, NEW)
    np.testing.assert_array_equal(greedy.lengths, [NEW] * 3)


def test_cached_and_recomputed_generation_give_identical_greedy_tokens(model, greedy):
    recomputed = generate_recompute(model, PROMPTS, max_new_tokens=NEW, eos_id=-1)
    np.testing.assert_array_equal(recomputed.tokens, greedy.tokens)


def test_each_prompt_generates_the_same_alone_as_in_a_batch(model, greedy):
    for b, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], max_new_tokens=NEW, eos_id=-1)
        np.testing.assert_array_equal(alone.tokens[0], greedy.tokens[b], err_msg=f"prompt {b}")


def test_logprobs_are_the_models_log_softmax_of_the_chosen_tokens(model, greedy):
    seqs = [p + greedy.tokens[b].tolist() for b, p in enumerate(PROMPTS)]
    batch = np.zeros((len(seqs), 16), np.int32)  # right padding: invisible to earlier positions
    for b, seq in enumerate(seqs):
        batch[b, : len(seq)] = seq
    logp = np.asarray(jax.nn.log_softmax(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(batch))))
    for b, prompt in enumerate(PROMPTS):
        P = len(prompt)
        expected = logp[b, P - 1 : P - 1 + NEW][np.arange(NEW), greedy.tokens[b]]
        np.testing.assert_allclose(greedy.logprobs[b], expected, atol=1e-4)


def test_each_sequence_stops_at_its_own_eos_and_pads_after_it(model, greedy):
    # Declare as "EOS" a token that row 0 emits mid-way; rows stop where that token first appears.
    row0 = greedy.tokens[0].tolist()
    first = next(i for i in range(1, NEW - 1) if row0[i] not in row0[:i])
    eos = row0[first]
    out = generate(model, PROMPTS, max_new_tokens=NEW, eos_id=eos)
    for b in range(len(PROMPTS)):
        row = greedy.tokens[b].tolist()
        stop = row.index(eos) if eos in row else NEW
        assert out.lengths[b] == stop, f"row {b}"
        np.testing.assert_array_equal(out.tokens[b, : stop + 1], greedy.tokens[b, : stop + 1])
        np.testing.assert_array_equal(out.tokens[b, stop + 1 :], PAD)
        np.testing.assert_array_equal(out.logprobs[b, stop + 1 :], 0.0)
    assert out.lengths[0] == first < NEW
    recomputed = generate_recompute(model, PROMPTS, max_new_tokens=NEW, eos_id=eos)
    np.testing.assert_array_equal(recomputed.tokens, out.tokens)


def test_the_same_key_gives_the_same_samples_and_another_key_does_not(model):
    def sample(seed):
        return generate(
            model,
            PROMPTS,
            max_new_tokens=NEW,
            temperature=1.0,
            top_p=0.95,
            key=jax.random.key(seed),
            eos_id=-1,
        ).tokens

    np.testing.assert_array_equal(sample(0), sample(0))
    assert not np.array_equal(sample(0), sample(1))


def test_sampling_with_top_k_1_is_greedy(model, greedy):
    out = generate(
        model,
        PROMPTS,
        max_new_tokens=NEW,
        temperature=0.7,
        top_k=1,
        key=jax.random.key(3),
        eos_id=-1,
    )
    np.testing.assert_array_equal(out.tokens, greedy.tokens)


def test_generate_text_decodes_each_completion(model, greedy):
    tok = CharTokenizer()
    texts = ["ab", "cdefgh", "ijkl"]
    out = generate_text(model, tok, texts, max_new_tokens=NEW, eos_id=-1)  # decode stops at EOS
    ref = generate(model, [tok.encode(t, bos=True) for t in texts], max_new_tokens=NEW, eos_id=-1)
    assert out == [tok.decode(row) for row in ref.tokens]
    with pytest.raises(TypeError, match="list of strings"):
        generate_text(model, tok, "ab")


# ------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=10_000), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=2.0), "max_new_tokens"),
    ],
)
def test_bad_sampling_arguments_raise_value_error_naming_them(model, kwargs, field):
    with pytest.raises(ValueError, match=field):
        generate(model, PROMPTS, **kwargs)


@pytest.mark.parametrize(
    "prompts", [[], [[]], [[1, 2], []]], ids=["no-prompts", "empty", "one-empty"]
)
def test_empty_prompts_raise_value_error(model, prompts):
    with pytest.raises(ValueError, match="prompts"):
        generate(model, prompts)


@pytest.mark.parametrize("bad_id", [500, -3])
def test_prompt_ids_outside_the_vocabulary_raise_value_error(model, bad_id):
    # Unchecked, 500 would embed as NaN and -3 would silently wrap around to the end of the table.
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, [[1, bad_id]])


def test_generate_needs_a_minids_transformer():
    with pytest.raises(TypeError, match="Transformer"):
        generate(lambda tokens: tokens, PROMPTS)


# ------------------------------------------------------------------------------ sample_logits

LOGITS = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
KEYS = jax.random.split(jax.random.key(0), 4000)


def _samples(temperature=1.0, top_k=None, top_p=1.0):
    draw = jax.jit(jax.vmap(lambda k: sample_logits(LOGITS, k, temperature, top_k, top_p)[0]))
    return np.asarray(draw(KEYS))


def test_temperature_zero_is_argmax_whatever_the_key():
    np.testing.assert_array_equal(_samples(temperature=0.0), 0)


def test_temperature_one_samples_the_softmax():
    freq = np.bincount(_samples(), minlength=4) / len(KEYS)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_top_k_keeps_only_the_k_most_likely_tokens():
    assert set(_samples(top_k=2).tolist()) == {0, 1}


@pytest.mark.parametrize("top_p, allowed", [(0.4, {0}), (0.75, {0, 1}), (0.9, {0, 1, 2})])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, allowed):
    assert set(_samples(top_p=top_p).tolist()) == allowed


# ------------------------------------------------------------------------------- task_accuracy


def test_task_accuracy_grades_each_task_with_its_check(model, monkeypatch):
    examples = [
        {"task": "add", "prompt": "12+30=", "answer": "42"},
        {"task": "add", "prompt": "10+10=", "answer": "20"},
        {"task": "rev", "prompt": "rev abcde=", "answer": "edcba"},
        {"task": "custom", "prompt": "hi", "answer": "there"},
    ]
    outputs = ["42", "21", " edcba ", "there"]
    monkeypatch.setattr(gen_mod, "generate_text", lambda *args, **kwargs: outputs)
    acc = task_accuracy(model, examples)
    assert acc == {"add": 0.5, "rev": 1.0, "custom": 1.0, "all": 0.75}

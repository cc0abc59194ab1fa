"""Distillation: the temperature-scaled KD loss against hand-computed values, rejection sampling, and
students that learn from a fixed teacher (R1 §2.4; Hinton et al. 2015)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from minids.data import CharTokenizer, encode_examples, generate_splits
from minids.distill import (
    check_compatible,
    distillation_loss,
    distillation_objective,
    fit_logit_distillation,
    rejection_sample,
    task_check,
)
from minids.mla import MLAConfig
from minids.model import Transformer
from minids.moe import MoEConfig
from minids.train import TrainConfig, fit, loss_fn

TCFG = TrainConfig(steps=40, batch_size=16, lr=1e-2, warmup_steps=0, eval_every=0, eval_examples=0)


def _logits(*rows):
    return jnp.asarray([[list(r) for r in rows]], jnp.float32)  # (1, T, V)


# ------------------------------------------------------------------------------------ the loss


def test_kd_loss_by_hand_at_temperature_one():
    # teacher p = (1/2, 1/2); student q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    loss = distillation_loss(_logits([math.log(3), 0.0]), _logits([0.0, 0.0]), 1.0)
    assert float(loss) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)


def test_kd_loss_by_hand_at_temperature_two_includes_t_squared():
    # At T = 2 the student's logits (2 ln 3, 0) soften to (ln 3, 0): q = (3/4, 1/4) again, p = (1/2, 1/2).
    # The KL is 1/2 ln(4/3) as above, and the loss is T^2 = 4 times that.
    loss = distillation_loss(_logits([2 * math.log(3), 0.0]), _logits([0.0, 0.0]), 2.0)
    assert float(loss) == pytest.approx(4 * 0.5 * math.log(4 / 3), rel=1e-6)


def test_kd_loss_averages_over_the_masked_tokens_only():
    student = _logits([math.log(3), 0.0], [5.0, -5.0])
    teacher = _logits([0.0, 0.0], [-5.0, 5.0])  # the second token disagrees wildly, but is masked
    loss = distillation_loss(student, teacher, 1.0, mask=jnp.asarray([[1.0, 0.0]]))
    assert float(loss) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)


@given(st.lists(st.floats(-6, 6), min_size=3, max_size=3), st.floats(0.5, 4.0))
def test_kd_loss_is_zero_when_teacher_equals_student_and_positive_otherwise(row, temperature):
    logits = _logits(row)
    assert abs(float(distillation_loss(logits, logits, temperature))) < 1e-6
    other = logits.at[0, 0, 0].add(1.0)
    assert float(distillation_loss(other, logits, temperature)) > 0


def test_kd_gradient_is_t_times_the_difference_of_softened_distributions():
    """d/dz_s of T^2 KL = T (softmax(z_s / T) - softmax(z_t / T)): the T^2 keeps it O(1) in T."""
    rng = np.random.default_rng(0)
    s, t = (
        jnp.asarray(rng.normal(size=(1, 1, 5)), jnp.float32),
        jnp.asarray(rng.normal(size=(1, 1, 5)), jnp.float32),
    )
    for T in (1.0, 3.0):
        grad = jax.grad(lambda z, T=T: distillation_loss(z, t, T))(s)
        want = T * (jax.nn.softmax(s / T) - jax.nn.softmax(t / T))
        np.testing.assert_allclose(grad, want, atol=1e-6)


def test_no_gradient_reaches_the_teacher():
    s, t = _logits([1.0, 0.0]), _logits([0.0, 1.0])
    assert float(jnp.abs(jax.grad(lambda t: distillation_loss(s, t, 2.0))(t)).max()) == 0.0


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(_logits([0.0, 1.0]), _logits([0.0, 1.0]), temperature)


def test_logits_of_different_vocabularies_raise():
    with pytest.raises(ValueError, match="same vocabulary"):
        distillation_loss(_logits([0.0, 1.0]), _logits([0.0, 1.0, 2.0]), 1.0)


# ------------------------------------------------------------------- teachers and students


@pytest.fixture(scope="module")
def examples():
    return generate_splits(seed=0, sizes={"train": 48, "val": 0, "test": 0}, tasks=["add", "rev"])[
        "train"
    ]


@pytest.fixture(scope="module")
def teacher(cfg):
    """A different architecture from the students: MLA attention and an MoE feed-forward."""
    return Transformer(
        cfg.replace(
            seed=1,
            mla=MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8),
            moe=MoEConfig(
                n_routed_experts=4, experts_per_token=2, expert_ffn_dim=16, n_dense_layers=1
            ),
        )
    )


def test_tokenizer_mismatch_raises_a_clear_error(cfg, teacher):
    student = Transformer(cfg.replace(vocab_size=256))
    with pytest.raises(ValueError, match="share the tokenizer"):
        check_compatible(teacher, student)
    with pytest.raises(ValueError, match="share the tokenizer"):
        fit_logit_distillation(student, teacher, [], cfg=TCFG, progress=False)


def test_rejection_sampling_keeps_only_what_the_checker_accepts(teacher, examples):
    def even_length(example, completion):  # an arbitrary, checkable rule for a random teacher
        return len(completion) % 2 == 0

    kept, stats = rejection_sample(
        teacher,
        examples[:16],
        samples_per_prompt=6,
        keep_per_prompt=2,
        check=even_length,
        max_new_tokens=6,
        seed=3,
    )
    assert stats.samples == 96 and 0 < stats.correct < 96  # some accepted, some rejected
    assert all(even_length(None, ex["answer"]) for ex in kept)
    assert all(not even_length(None, r["completion"]) for r in stats.rejected_examples)
    per_prompt = {}
    for ex in kept:
        per_prompt.setdefault(ex["prompt"], []).append(ex["answer"])
    assert all(len(v) <= 2 and len(set(v)) == len(v) for v in per_prompt.values())
    assert stats.kept == len(kept) and stats.prompts_with_a_keeper == len(per_prompt)


def test_task_check_accepts_exactly_the_right_answer(examples):
    ex = examples[0]
    assert task_check(ex, ex["answer"]) and task_check(ex, f" {ex['answer']} ")
    assert not task_check(ex, ex["answer"] + "0") and not task_check(
        {"prompt": "?", "task": "nope"}, ""
    )


def test_a_student_learns_a_fixed_teachers_samples(cfg, teacher, examples):
    """Sequence-level distillation on a toy case: the student's loss on the teacher's samples falls."""
    kept, _ = rejection_sample(
        teacher,
        examples,
        samples_per_prompt=1,
        check=lambda ex, c: True,
        max_new_tokens=6,
        temperature=0.0,
    )
    assert len(kept) == len(examples)
    student = Transformer(cfg.replace(n_layers=1, seed=2))
    arrays = {
        k: jnp.asarray(v)
        for k, v in encode_examples(kept, CharTokenizer(), cfg.max_seq_len).items()
    }
    loss = nnx.jit(loss_fn)
    before = float(loss(student, arrays))
    fit(student, kept, None, TCFG, progress=False)
    after = float(loss(student, arrays))
    assert after < 0.5 * before, (before, after)


def test_logit_distillation_pulls_the_student_towards_the_teacher(cfg, teacher, examples):
    student = Transformer(cfg.replace(n_layers=1, seed=3))  # dense, smaller: another architecture
    arrays = {
        k: jnp.asarray(v)
        for k, v in encode_examples(examples, CharTokenizer(), cfg.max_seq_len).items()
    }

    def kl():
        return float(
            distillation_loss(
                compiled()(student, arrays["inputs"]),
                compiled()(teacher, arrays["inputs"]),
                2.0,
                arrays["loss_mask"],
            )
        )

    before = kl()
    history = fit_logit_distillation(
        student, teacher, examples, None, TCFG, alpha=1.0, temperature=2.0, progress=False
    )
    assert len(history.loss) == TCFG.steps and kl() < 0.5 * before


def test_logit_distillation_with_alpha_zero_is_plain_training(cfg, teacher, examples):
    a, b = Transformer(cfg.replace(seed=4)), Transformer(cfg.replace(seed=4))
    short = dataclasses.replace(TCFG, steps=3)
    h_plain = fit(a, examples, None, short, progress=False)
    h_kd = fit_logit_distillation(b, teacher, examples, None, short, alpha=0.0, progress=False)
    np.testing.assert_allclose(h_kd.loss, h_plain.loss, rtol=1e-5)


@pytest.mark.parametrize("field, value", [("alpha", 1.5), ("temperature", 0.0)])
def test_bad_distillation_settings_raise(cfg, teacher, examples, field, value):
    with pytest.raises(ValueError, match=field):
        fit_logit_distillation(
            Transformer(cfg), teacher, examples, cfg=TCFG, progress=False, **{field: value}
        )


def test_distillation_objective_mixes_kd_and_cross_entropy_by_alpha():
    rng = np.random.default_rng(0)
    student, teacher = (jnp.asarray(rng.standard_normal((2, 3, 5)), jnp.float32) for _ in "st")
    targets = jnp.asarray(rng.integers(0, 5, (2, 3)), jnp.int32)
    mask = jnp.asarray([[1, 1, 0], [1, 0, 0]], jnp.float32)
    log_p = jax.nn.log_softmax(student, axis=-1)
    ce = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    ce = float(jnp.sum(ce * mask) / jnp.sum(mask))
    kd = float(distillation_loss(student, teacher, 2.0, mask))
    for alpha in (0.0, 0.3, 1.0):
        got = float(distillation_objective(student, teacher, targets, mask, alpha, 2.0))
        assert math.isclose(got, alpha * kd + (1 - alpha) * ce, rel_tol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        distillation_objective(student, teacher, targets, mask, 1.5)

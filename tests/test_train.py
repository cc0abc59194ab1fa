"""Training: the loss, reproducibility, checkpoints that round-trip and resume exactly, the NaN guard.

Every `fit` here runs 6 steps of 8 examples on a 1-layer, 32-wide model; what is compared is exact
(bit-for-bit losses), so a handful of steps is as telling as a thousand.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import minids.train as train_mod
from minids.data import CharTokenizer, encode_examples, generate_splits
from minids.model import Transformer
from minids.train import (
    History,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
    loss_fn,
    lr_schedule,
    make_optimizer,
    read_meta,
    restore_into,
    save_checkpoint,
    train_step,
)

TCFG = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=3, eval_examples=16)


@pytest.fixture(scope="module")
def cfg(cfg):
    """The shared test config with one layer: training compiles a step per `fit`, and depth is
    not what these tests are about."""
    return cfg.replace(n_layers=1)


@pytest.fixture(scope="module")
def examples():
    return generate_splits(seed=0, sizes={"train": 32, "val": 8, "test": 0}, tasks=["add", "rev"])


@pytest.fixture(scope="module")
def trained(cfg, examples):
    """One uninterrupted run: (model, history)."""
    model = Transformer(cfg)
    history = fit(model, examples["train"], examples["val"], TCFG, progress=False)
    return model, history


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(x, y)


@nnx.jit
def _logits(model, tokens):
    return model(tokens)


_loss = nnx.jit(loss_fn)
TOKENS = jnp.asarray(np.arange(3, 3 + 2 * 9).reshape(2, 9), jnp.int32)


# ------------------------------------------------------------------------------------------ loss


def test_fit_records_every_step_and_evaluates_on_schedule(trained):
    _, history = trained
    assert history.step == list(range(6))
    assert len(history.loss) == len(history.grad_norm) == len(history.lr) == 6
    assert history.val_step == [3, 6]  # every eval_every steps, and at the end
    assert all(math.isfinite(x) for x in history.loss + history.val_loss)
    assert all(0.0 <= a <= 1.0 for a in history.val_token_acc)


def test_loss_is_the_mean_cross_entropy_over_answer_tokens_only(cfg, trained, examples):
    model, _ = trained
    arrays = encode_examples(examples["val"], CharTokenizer(), cfg.max_seq_len)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    loss = float(_loss(model, batch))

    logits = np.asarray(_logits(model, batch["inputs"]), np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, arrays["targets"][..., None], axis=-1)[..., 0]
    mask = arrays["loss_mask"]
    assert loss == pytest.approx((ce * mask).sum() / mask.sum(), rel=1e-5)

    # Targets outside the mask (the prompt, the padding) do not count.
    scrambled = dict(batch, targets=jnp.where(batch["loss_mask"] > 0, batch["targets"], 7))
    assert float(_loss(model, scrambled)) == pytest.approx(loss, rel=1e-6)

    # evaluate() sums the same numbers across batches.
    metrics = evaluate(model, arrays, batch_size=8)  # two batches
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    correct = (logits.argmax(-1) == arrays["targets"]) * mask
    assert metrics["token_acc"] == pytest.approx(correct.sum() / mask.sum())


def test_train_step_lowers_the_loss_on_a_repeated_batch(cfg, examples):
    model = Transformer(cfg)
    optimizer = make_optimizer(model, dataclasses.replace(TCFG, warmup_steps=0, steps=20))
    arrays = encode_examples(examples["train"][:8], CharTokenizer(), cfg.max_seq_len)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    losses = [float(train_step(model, optimizer, batch)["loss"]) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_lr_schedule_warms_up_linearly_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lr = lr_schedule(cfg)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(100)) == pytest.approx(1e-4)
    assert all(float(lr(s + 1)) <= float(lr(s)) for s in range(10, 100))


# ------------------------------------------------------------------------------- reproducibility


def test_the_same_seeds_give_bit_identical_losses(cfg, trained, examples):
    _, history = trained
    again = fit(Transformer(cfg), examples["train"], examples["val"], TCFG, progress=False)
    assert again.loss == history.loss
    assert again.val_loss == history.val_loss


@pytest.mark.parametrize("which", ["train_seed", "model_seed"])
def test_a_different_seed_gives_different_losses(cfg, trained, examples, which):
    _, history = trained
    model_cfg = cfg.replace(seed=1) if which == "model_seed" else cfg
    train_cfg = dataclasses.replace(TCFG, seed=1) if which == "train_seed" else TCFG
    other = fit(
        Transformer(model_cfg), examples["train"], examples["val"], train_cfg, progress=False
    )
    assert other.loss != history.loss


# ----------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_params_and_logits(tmp_path, trained):
    model, history = trained
    path = save_checkpoint(
        tmp_path / "ckpt",
        model,
        make_optimizer(model, TCFG),
        step=6,
        history=history,
        train_cfg=TCFG,
    )
    loaded, meta = load_checkpoint(path)
    assert loaded.cfg == model.cfg
    _assert_same_params(loaded, model)
    np.testing.assert_array_equal(
        np.asarray(_logits(loaded, TOKENS)), np.asarray(_logits(model, TOKENS))
    )
    assert meta["step"] == 6 and meta["has_optimizer"]
    assert History.from_dict(meta["history"]) == history
    assert TrainConfig(**meta["train_config"]) == TCFG


def test_save_is_atomic_and_replaces_an_existing_checkpoint(tmp_path, cfg, trained):
    model, _ = trained
    save_checkpoint(tmp_path / "ckpt", model, step=1)
    other = Transformer(cfg.replace(seed=1))
    save_checkpoint(tmp_path / "ckpt", other, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp-* / .old-* left behind
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["step"] == 2 and not meta["has_optimizer"]
    _assert_same_params(loaded, other)


def test_save_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path, trained):
    model, _ = trained
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("a week of work")
    with pytest.raises(ValueError, match="not a minids checkpoint"):
        save_checkpoint(precious, model)
    assert (precious / "notes.txt").read_text() == "a week of work"
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", model)
    assert read_meta(tmp_path / "empty")["step"] == 0  # an empty folder is fine to fill


def test_loading_a_folder_that_is_not_a_checkpoint_raises_value_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match="not a minids checkpoint"):
            load_checkpoint(path)


def test_restoring_into_a_model_of_another_config_raises_value_error(tmp_path, cfg, trained):
    model, _ = trained
    save_checkpoint(tmp_path / "ckpt", model)
    wider = nnx.eval_shape(lambda: Transformer(cfg.replace(d_model=48)))
    with pytest.raises(ValueError, match="different ModelConfig"):
        restore_into(tmp_path / "ckpt", wider)
    with pytest.raises(ValueError, match="no optimizer state"):
        restore_into(tmp_path / "ckpt", model, make_optimizer(model, TCFG))


def test_resuming_an_interrupted_run_gives_exactly_the_uninterrupted_losses(
    tmp_path, cfg, trained, examples
):
    model, history = trained
    tcfg = dataclasses.replace(TCFG, ckpt_every=2)  # saves after steps 2 and 3 of the first call
    first = fit(
        Transformer(cfg),
        examples["train"],
        examples["val"],
        tcfg,
        ckpt_dir=tmp_path / "ck",
        stop_after=3,
        progress=False,
    )
    assert first.step == [0, 1, 2] and read_meta(tmp_path / "ck")["step"] == 3

    resumed_model = Transformer(cfg)
    resumed = fit(
        resumed_model,
        examples["train"],
        examples["val"],
        tcfg,
        ckpt_dir=tmp_path / "ck",
        resume=True,
        progress=False,
    )
    assert resumed.step == history.step
    assert resumed.loss == history.loss
    assert resumed.lr == history.lr
    assert resumed.val_step == history.val_step and resumed.val_loss == history.val_loss
    _assert_same_params(resumed_model, model)
    assert read_meta(tmp_path / "ck")["step"] == 6

    # Resuming a finished run trains nothing and records nothing new.
    again = fit(
        Transformer(cfg),
        examples["train"],
        examples["val"],
        tcfg,
        ckpt_dir=tmp_path / "ck",
        resume=True,
        progress=False,
    )
    assert dataclasses.replace(again, seconds=0) == dataclasses.replace(resumed, seconds=0)


def test_resume_without_a_checkpoint_raises_value_error(tmp_path, cfg, examples):
    model = Transformer(cfg)
    for ckpt_dir in (None, tmp_path / "missing"):
        with pytest.raises(ValueError, match="resume"):
            fit(
                model, examples["train"], None, TCFG, ckpt_dir=ckpt_dir, resume=True, progress=False
            )


def test_fit_rejects_a_vocabulary_smaller_than_the_tokenizers(cfg, examples):
    model = nnx.eval_shape(lambda: Transformer(cfg.replace(vocab_size=50)))
    with pytest.raises(ValueError, match="vocab_size"):
        fit(model, examples["train"], None, TCFG, progress=False)


def _fake_train_step(losses: dict[int, float]):
    """A stand-in for `train_step` (no compiling) whose n-th call returns `losses.get(n, 1.0)`."""
    calls = []

    def step(model, optimizer, batch):
        calls.append(len(batch["inputs"]))
        return {"loss": jnp.float32(losses.get(len(calls) - 1, 1.0)), "grad_norm": jnp.float32(1.0)}

    return step, calls


def test_eval_examples_zero_means_no_evaluation(cfg, examples, monkeypatch):
    step, calls = _fake_train_step({})
    monkeypatch.setattr(train_mod, "train_step", step)
    tcfg = dataclasses.replace(TCFG, eval_examples=0)
    history = fit(Transformer(cfg), examples["train"], examples["val"], tcfg, progress=False)
    assert len(calls) == 6 and history.val_step == [] and history.val_loss == []


# ------------------------------------------------------------------------------------- NaN guard


def test_a_non_finite_loss_stops_training_naming_the_step(cfg, examples, monkeypatch):
    fake_step, calls = _fake_train_step({3: float("nan")})
    monkeypatch.setattr(train_mod, "train_step", fake_step)
    with pytest.raises(FloatingPointError, match="step 3"):
        fit(Transformer(cfg), examples["train"], None, TCFG, progress=False)
    assert len(calls) == 4  # it stopped there


def test_a_model_that_blows_up_raises_before_saving_anything(tmp_path, cfg, examples):
    model = Transformer(cfg)
    model.embed.embed.embedding[...] = model.embed.embed.embedding[...].at[:, 0].set(jnp.inf)
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(model, examples["train"], None, TCFG, ckpt_dir=tmp_path / "ck", progress=False)
    assert not (tmp_path / "ck").exists()


def test_train_config_defaults_follow_deepseek_v3():
    cfg = TrainConfig()
    assert (cfg.b1, cfg.b2, cfg.weight_decay, cfg.grad_clip) == (0.9, 0.95, 0.1, 1.0)

"""DeepSeekMoE inside the Transformer: config, parameter counts, training with balancing, cache, checkpoints."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled
from flax import nnx

from minids.config import ModelConfig, moe_param_counts
from minids.data import CharTokenizer, encode_examples, load_split
from minids.model import Transformer, count_params
from minids.moe import MoE, MoEConfig
from minids.train import TrainConfig, fit, load_checkpoint, make_optimizer, train_step

MOE = MoEConfig(
    n_routed_experts=4,
    n_shared_experts=1,
    experts_per_token=2,
    expert_ffn_dim=16,
    n_dense_layers=1,
    bias_update_speed=0.01,
)


@pytest.fixture(scope="module")
def moe_cfg(cfg) -> ModelConfig:
    return cfg.replace(n_layers=3, moe=MOE)


def _batch(cfg, n=8):
    rows = load_split("val")[:n]
    return {
        k: jnp.asarray(v)
        for k, v in encode_examples(rows, CharTokenizer(), cfg.max_seq_len).items()
    }


def test_leading_dense_layers_then_moe_layers(moe_cfg):
    model = Transformer(moe_cfg)
    assert [b.use_moe for b in model.blocks] == [False, True, True]
    assert all(isinstance(m, MoE) for m in model.moe_layers()) and len(model.moe_layers()) == 2


def test_total_and_activated_parameter_counts(moe_cfg, cfg):
    model = Transformer(moe_cfg)
    dense_ffn = 3 * cfg.d_model * cfg.ffn_dim
    moe_total, moe_active = moe_param_counts(moe_cfg)
    dense_model = Transformer(cfg.replace(n_layers=3))
    # Swap two dense FFNs for two MoE FFNs: the totals differ by exactly that.
    assert count_params(model) == count_params(dense_model) - 2 * dense_ffn + 2 * moe_total
    # A token reads one row of the (untied) embedding table, and K of the E routed experts.
    unread_rows = (cfg.vocab_size - 1) * cfg.d_model
    assert count_params(model, activated=True) == count_params(model) - unread_rows - 2 * (
        moe_total - moe_active
    )
    per_expert = 3 * cfg.d_model * MOE.expert_ffn_dim
    assert moe_total - moe_active == (MOE.n_routed_experts - MOE.experts_per_token) * per_expert
    assert count_params(dense_model, activated=True) == count_params(dense_model) - unread_rows
    tied = Transformer(cfg.replace(n_layers=3, tie_embeddings=True))
    assert count_params(tied, activated=True) == count_params(tied)  # the table is also the head


def test_forward_with_aux_reports_routing_statistics(moe_cfg):
    model = Transformer(moe_cfg)
    logits, aux = compiled("forward_with_aux")(model, _batch(moe_cfg)["inputs"])
    assert logits.shape[-1] == moe_cfg.vocab_size
    assert aux["load"].shape == (2, MOE.n_routed_experts)
    np.testing.assert_allclose(np.asarray(aux["load"].sum(-1)), 1.0, atol=1e-6)
    assert aux["max_vio"].shape == (2,) and bool(jnp.all(aux["max_vio"] >= 0))
    dense = Transformer(moe_cfg.replace(moe=None))
    dense_logits, dense_aux = compiled("forward_with_aux")(dense, _batch(moe_cfg)["inputs"])
    assert dense_aux == {} and dense_logits.shape == logits.shape


def test_train_step_updates_the_aux_free_bias_by_gamma_and_not_through_the_optimizer(moe_cfg):
    model = Transformer(moe_cfg)
    optimizer = make_optimizer(model, TrainConfig())
    metrics = train_step(model, optimizer, _batch(moe_cfg))
    for layer in model.moe_layers():
        bias = np.asarray(layer.aux_free_bias[...])
        # One step of the sign rule from zero: every entry is -gamma, 0 or +gamma, and not all 0.
        assert np.all(np.isin(np.round(bias / MOE.bias_update_speed), [-1, 0, 1]))
        assert np.any(bias != 0)
    assert {"max_vio", "aux_loss", "dropped_frac", "ce"} <= set(metrics)


def test_aux_loss_is_added_to_the_training_loss(moe_cfg):
    cfg = moe_cfg.replace(
        moe=dataclasses.replace(MOE, balancing="seq_aux_loss", aux_loss_alpha=0.5)
    )
    model = Transformer(cfg)
    metrics = train_step(model, make_optimizer(model, TrainConfig()), _batch(cfg))
    assert float(metrics["aux_loss"]) > 0
    np.testing.assert_allclose(
        float(metrics["loss"]), float(metrics["ce"] + metrics["aux_loss"]), rtol=1e-6
    )


def test_fit_logs_max_vio_and_checkpoints_keep_the_bias(moe_cfg, tmp_path):
    model = Transformer(moe_cfg)
    rows = load_split("train")[:256]
    history = fit(
        model,
        rows,
        None,
        TrainConfig(steps=4, batch_size=8, warmup_steps=1),
        ckpt_dir=tmp_path / "ck",
        progress=False,
    )
    assert len(history.max_vio) == len(history.loss) == 4
    restored, _ = load_checkpoint(tmp_path / "ck")
    for a, b in zip(model.moe_layers(), restored.moe_layers(), strict=True):
        np.testing.assert_array_equal(
            np.asarray(a.aux_free_bias[...]), np.asarray(b.aux_free_bias[...])
        )
    assert restored.cfg.moe == MOE


def test_kv_cache_decoding_matches_the_full_forward_for_an_moe_model(moe_cfg):
    model = Transformer(moe_cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 99, size=(2, 9)), jnp.int32)
    full = nnx.jit(lambda m, t: m(t))(model, tokens)
    cache = model.init_cache(2, 9)
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    step = nnx.jit(lambda m, t, p, c: m.forward_cached(t, p, c))  # compiled once per shape
    logits, cache = step(model, tokens[:, :5], positions[:, :5], cache)
    steps = [logits]
    for t in range(5, 9):
        logits, cache = step(model, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(
        np.asarray(jnp.concatenate(steps, axis=1)), np.asarray(full), atol=1e-5
    )


def test_fast_and_reference_dispatch_give_the_same_model(moe_cfg):
    tokens = _batch(moe_cfg)["inputs"]
    fast = compiled()(Transformer(moe_cfg), tokens)
    ref_cfg = moe_cfg.replace(moe=dataclasses.replace(MOE, dispatch="reference"))
    np.testing.assert_allclose(compiled()(Transformer(ref_cfg), tokens), fast, atol=1e-5)


def test_model_config_checks_the_moe_field(cfg):
    with pytest.raises(ValueError, match="moe"):
        cfg.replace(moe={"n_routed_experts": 4})
    with pytest.raises(ValueError, match="n_dense_layers"):
        cfg.replace(n_layers=2, moe=dataclasses.replace(MOE, n_dense_layers=2))
    round_trip = ModelConfig.from_dict(cfg.replace(n_layers=3, moe=MOE).to_dict())
    assert round_trip.moe == MOE

"""FP8 inside the Transformer: which layers go FP8, training, MoE experts, config and checkpoints."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minids.config import ModelConfig
from minids.data import CharTokenizer, encode_examples, load_split
from minids.fp8 import FP8Config, Fp8Linear, fake_quantize
from minids.kernels.moe_dispatch import dispatch_blocks, dispatch_ragged
from minids.model import Transformer
from minids.moe import MoEConfig, dispatch_reference, select_experts
from minids.train import TrainConfig, load_checkpoint, make_optimizer, save_checkpoint, train_step

MOE = MoEConfig(
    n_routed_experts=4, n_shared_experts=1, experts_per_token=2, expert_ffn_dim=16, n_dense_layers=1
)


def _batch(cfg, n=8):
    rows = load_split("val")[:n]
    return {
        k: jnp.asarray(v)
        for k, v in encode_examples(rows, CharTokenizer(), cfg.max_seq_len).items()
    }


@nnx.jit
def _logits(model, tokens):
    return model(tokens)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_precision_setting_and_config_round_trip(cfg):
    fp8 = cfg.with_precision("fp8")
    assert fp8.precision == "fp8" and fp8.fp8 == FP8Config()
    assert cfg.precision == "fp32" and cfg.with_precision("bf16").precision == "bf16"
    assert fp8.with_precision("fp32").fp8 is None
    custom = cfg.replace(fp8=FP8Config(scaling="tensor", promote_every=None, act_block=(1, 64)))
    assert ModelConfig.from_dict(custom.to_dict()) == custom  # JSON lists back to tuples
    with pytest.raises(ValueError, match="precision must be one of"):
        cfg.with_precision("fp4")
    with pytest.raises(ValueError, match="fp8 must be None or a minids.config.FP8Config"):
        cfg.replace(fp8={"fmt": "e4m3"})


def test_fp8_goes_where_v3_puts_it(cfg):
    model = Transformer(cfg.with_precision("fp8").replace(n_layers=3, moe=MOE))
    attn, dense_ffn = model.blocks[0].attn, model.blocks[0].ffn
    for layer in (
        attn.wq,
        attn.wk,
        attn.wv,
        attn.wo,
        dense_ffn.gate,
        dense_ffn.up,
        dense_ffn.down,
        model.blocks[1].ffn.shared_experts.up,
    ):
        assert isinstance(layer, Fp8Linear)
    assert type(model.lm_head) is nnx.Linear  # the output head stays in high precision
    moe = model.moe_layers()[0]
    assert moe.fp8 == FP8Config() and moe.expert_centroids[...].dtype == jnp.float32  # gate float32
    assert (
        Transformer(cfg).moe_layers() == []
        and type(Transformer(cfg).blocks[0].attn.wq) is nnx.Linear
    )


def test_fp8_model_starts_from_the_fp32_weights_and_stays_close(cfg):
    plain, fp8 = Transformer(cfg), Transformer(cfg.with_precision("fp8"))
    for a, b in zip(
        jax.tree.leaves(nnx.state(plain, nnx.Param)),
        jax.tree.leaves(nnx.state(fp8, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = _batch(cfg)["inputs"]
    assert 1e-4 < _rel(_logits(fp8, tokens), _logits(plain, tokens)) < 0.05


@nnx.jit
def _grads(model, tokens):
    return nnx.grad(lambda m: jnp.mean(-jax.nn.log_softmax(m(tokens))[..., 5]))(model)


def test_fp8_gradients_are_close_to_fp32(cfg):
    tokens, one_layer = (
        _batch(cfg)["inputs"],
        cfg.replace(n_layers=1),
    )  # one layer: faster to compile
    g32, g8 = (
        jax.tree.leaves(_grads(Transformer(one_layer.with_precision(p)), tokens))
        for p in ("fp32", "fp8")
    )
    assert (
        1e-4
        < _rel(np.concatenate([g.ravel() for g in g8]), np.concatenate([g.ravel() for g in g32]))
        < 0.1
    )


def test_fp8_checkpoint_round_trip(cfg, tmp_path):
    fp8_cfg = cfg.replace(fp8=FP8Config(pow2_scale=True, promote_every=64))
    model = Transformer(fp8_cfg)
    save_checkpoint(tmp_path / "ck", model, make_optimizer(model, TrainConfig()), step=3)
    restored, meta = load_checkpoint(tmp_path / "ck")
    assert restored.cfg == fp8_cfg and restored.cfg.fp8.act_block == (1, 128) and meta["step"] == 3
    assert isinstance(restored.blocks[0].attn.wq, Fp8Linear)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(restored)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_widths_that_are_not_multiples_of_128_get_a_partial_last_block(cfg):
    # d_model 192 = 128 + 64, and MoE experts of width 192: every block grid ends with a partial block.
    wide = cfg.replace(
        d_model=192,
        n_heads=4,
        head_dim=48,
        n_layers=2,
        moe=dataclasses.replace(MOE, expert_ffn_dim=192),
    )
    tokens = _batch(cfg, n=2)["inputs"]
    assert (
        1e-4
        < _rel(
            _logits(Transformer(wide.with_precision("fp8")), tokens),
            _logits(Transformer(wide), tokens),
        )
        < 0.05
    )


def _moe_inputs(T=24, D=128, F=128, E=4, K=2, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    scores = jax.nn.sigmoid(jnp.asarray(rng.standard_normal((T, E)), jnp.float32))
    indices, gates = select_experts(
        scores, jnp.zeros(E), MoEConfig(n_routed_experts=E, experts_per_token=K)
    )
    w = [
        jnp.asarray(rng.standard_normal(s) / np.sqrt(s[1]), jnp.float32)
        for s in ((E, D, F), (E, D, F), (E, F, D))
    ]
    return x, indices, gates, w, jnp.asarray(rng.standard_normal((T, D)), jnp.float32)


def _dispatch_grads(dispatch, fp8, x, indices, gates, w, probe):
    def loss(x, wg, wu, wd):
        return jnp.sum(dispatch(x, indices, gates, wg, wu, wd, fp8=fp8)[0] * probe)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(x, *w)


@pytest.mark.parametrize("kernel", [dispatch_blocks, dispatch_ragged], ids=["blocks", "ragged"])
def test_fp8_experts_dispatch_kernels_agree_with_the_reference_and_stay_close_to_fp32(kernel):
    x, indices, gates, w, probe = _moe_inputs()
    fp8 = FP8Config()
    value_fast, grads_fast = _dispatch_grads(kernel, fp8, x, indices, gates, w, probe)
    value_ref, grads_ref = _dispatch_grads(dispatch_reference, fp8, x, indices, gates, w, probe)
    value_32, grads_32 = _dispatch_grads(kernel, None, x, indices, gates, w, probe)
    assert _rel(value_fast, value_ref) < 1e-5
    for g_fast, g_ref, g_32 in zip(grads_fast, grads_ref, grads_32, strict=True):
        assert _rel(g_fast, g_ref) < 1e-5
        assert 1e-4 < _rel(g_fast, g_32) < 0.1  # FP8 changed something, not much


def test_fp8_experts_run_their_forward_on_quantized_values():
    x, indices, gates, w, _ = _moe_inputs(seed=1)
    fp8 = FP8Config()
    got = jax.jit(lambda *a: dispatch_blocks(*a, fp8=fp8)[0])(x, indices, gates, *w)
    q = [fake_quantize(t, "e4m3", b) for t, b in ((x, (1, 128)), *((wi, (128, 128)) for wi in w))]
    gate_up = [jnp.einsum("TD,EDF->ETF", q[0], wi) for wi in q[1:3]]
    hidden = fake_quantize(jax.nn.silu(gate_up[0]) * gate_up[1], "e4m3", (1, 128))
    out = jnp.einsum("ETF,EFD->ETD", hidden, q[3])
    want = jnp.einsum("TKE,TK,ETD->TD", jax.nn.one_hot(indices, 4), gates, out)
    assert _rel(got, want) < 1e-5
    assert _rel(got, jax.jit(lambda *a: dispatch_blocks(*a)[0])(x, indices, gates, *w)) > 1e-4


def test_fp8_moe_model_trains(cfg):
    # Attention, shared and routed experts all FP8 (one MoE block); a few steps lower the loss.
    moe_cfg = cfg.with_precision("fp8").replace(
        n_layers=1, moe=dataclasses.replace(MOE, n_dense_layers=0)
    )
    model = Transformer(moe_cfg)
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, warmup_steps=0))
    batch = _batch(moe_cfg)
    losses = [float(train_step(model, optimizer, batch)["loss"]) for _ in range(4)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_tiny_v3_trains_in_fp8_with_mla_projections_in_fp8():
    """DeepSeek-V3's architecture at toy size with V3's FP8 recipe: MLA projections and experts in FP8."""
    from minids.config import preset

    cfg = preset("tiny_v3", n_layers=2).with_precision("fp8")  # one dense, one MoE layer
    model = Transformer(cfg)
    attn = model.blocks[0].attn
    assert all(
        isinstance(getattr(attn, name), Fp8Linear)
        for name in ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo")
    )
    assert not isinstance(model.lm_head, Fp8Linear)
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, warmup_steps=0))
    batch = _batch(cfg)
    losses = [float(train_step(model, optimizer, batch)["loss"]) for _ in range(4)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses

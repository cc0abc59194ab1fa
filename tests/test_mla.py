"""Multi-head latent attention: the latent cache, naive and absorbed decoding, decoupled RoPE, and the
KV-cache accounting (DeepSeek-V2 §2.1, Table 1).

Tolerances are float32's: cached decoding adds the same numbers in a different order from the full
forward pass (and the absorbed path multiplies in a different order again), so logits agree to
`ATOL = 1e-5`, not bit for bit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled
from flax import nnx

from minids.attention import attention_mask, dot_product_attention
from minids.config import ModelConfig
from minids.data import CharTokenizer, encode_examples, generate_splits
from minids.generate import generate, generate_recompute, left_pad
from minids.kernels.attention import causal_attention
from minids.mla import (
    MLA,
    MLAConfig,
    absorbed_attention,
    absorbed_scores,
    kv_cache_bytes_per_token,
    kv_cache_elements_per_token,
    latent_kv,
    naive_scores,
)
from minids.model import Transformer, count_params
from minids.train import TrainConfig, load_checkpoint, make_optimizer, save_checkpoint, train_step

ATOL = 1e-5
# Hn (16) != Hv (8) != R (8) and C (16) differs from all of them, so a mixed-up axis cannot hide.
MLA_CFG = MLAConfig(
    q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=8
)


@pytest.fixture(scope="module", params=[0, 24], ids=["no-q-compression", "q-lora-24"])
def mcfg(request, cfg):
    return cfg.replace(d_model=48, mla=MLA_CFG.replace(q_lora_rank=request.param))


def _tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(3, 99, size=shape).astype(np.int32)


@nnx.jit
def _forward(model, tokens, positions):
    return model(tokens, positions)


@nnx.jit
def _forward_cached(model, tokens, positions, cache, token_mask):
    return model.forward_cached(tokens, positions, cache, token_mask)


def _with_decode(cfg, decode):
    return cfg.replace(mla=cfg.mla.replace(decode=decode))


def _decode_step_by_step(model, seq, prompt_len):
    B, T = seq.shape
    cache = model.init_cache(B, T)
    pos = np.broadcast_to(np.arange(T), (B, T))
    logits, cache = _forward_cached(
        model, seq[:, :prompt_len], pos[:, :prompt_len], cache, jnp.ones((B, prompt_len), bool)
    )
    out = [logits]
    for t in range(prompt_len, T):
        step, cache = _forward_cached(
            model, seq[:, t : t + 1], pos[:, t : t + 1], cache, jnp.ones((B, 1), bool)
        )
        out.append(step)
    return np.concatenate([np.asarray(x) for x in out], axis=1), cache


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "field, value",
    [
        ("q_lora_rank", -1),
        ("kv_lora_rank", 0),
        ("qk_nope_head_dim", 2.5),
        ("qk_rope_head_dim", 7),
        ("v_head_dim", 0),
        ("decode", "fast"),
        ("kv_lora_rank", True),
    ],
)
def test_bad_mla_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"mla.{field}"):
        MLAConfig(**{field: value})


def test_model_config_rejects_an_mla_field_of_the_wrong_type(cfg):
    with pytest.raises(ValueError, match="mla must be None or a minids.config.MLAConfig"):
        cfg.replace(mla={"kv_lora_rank": 16})


def test_softmax_scale_counts_the_nope_and_rope_channels():
    assert MLAConfig(qk_nope_head_dim=128, qk_rope_head_dim=64).softmax_scale == pytest.approx(
        192**-0.5
    )


def test_attention_kind_is_read_from_the_config(cfg, mcfg):
    assert mcfg.attention == "mla"
    kinds = {m: cfg.replace(n_kv_heads=m).attention for m in (4, 2, 1)}
    assert kinds == {4: "mha", 2: "gqa", 1: "mqa"}


def test_config_with_mla_round_trips_through_a_checkpoint(mcfg, tmp_path):
    assert ModelConfig.from_dict(mcfg.to_dict()) == mcfg
    model = Transformer(mcfg)
    save_checkpoint(tmp_path / "ckpt", model)
    restored, _ = load_checkpoint(tmp_path / "ckpt")
    assert restored.cfg == mcfg
    tokens = jnp.asarray(_tokens((2, 6)))
    np.testing.assert_array_equal(compiled()(restored, tokens), compiled()(model, tokens))


# ------------------------------------------------------------------------------ the latent cache


def test_cache_holds_only_the_latent_and_the_rope_key(mcfg):
    model = Transformer(mcfg)
    cache = model.init_cache(3, 10)
    C, R = mcfg.mla.kv_lora_rank, mcfg.mla.qk_rope_head_dim
    assert len(cache.layers) == mcfg.n_layers
    for layer in cache.layers:
        assert set(layer) == {"c_kv", "k_rope"}
        assert layer["c_kv"].shape == (3, 10, C) and layer["k_rope"].shape == (3, 10, R)
    assert cache.nbytes() == mcfg.n_layers * 3 * 10 * (C + R) * 4


@pytest.mark.parametrize("decode", ["naive", "absorbed"])
def test_cached_decoding_equals_the_full_forward_pass(mcfg, decode):
    model = Transformer(_with_decode(mcfg, decode))
    seq = _tokens((2, 11), seed=3)
    full = np.asarray(_forward(model, jnp.asarray(seq), jnp.broadcast_to(jnp.arange(11), (2, 11))))
    cached, cache = _decode_step_by_step(model, jnp.asarray(seq), prompt_len=4)
    np.testing.assert_allclose(cached, full, atol=ATOL)
    assert int(cache.index) == 11


def test_naive_and_absorbed_decoding_agree_on_left_padded_prompts(mcfg):
    """Same weights (the decode setting adds no parameter), a padded batch, a few greedy steps."""
    prompts = [[1, 20, 30], [1, 40, 41, 42, 43, 44, 45], [1, 50, 51, 52, 53]]
    naive = Transformer(_with_decode(mcfg, "naive"))
    absorbed = Transformer(_with_decode(mcfg, "absorbed"))
    a = generate(naive, prompts, max_new_tokens=6, eos_id=-1)
    b = generate(absorbed, prompts, max_new_tokens=6, eos_id=-1)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=ATOL)
    recomputed = generate_recompute(absorbed, prompts, max_new_tokens=6, eos_id=-1)
    np.testing.assert_array_equal(recomputed.tokens, b.tokens)


def test_left_padding_with_a_key_mask_changes_nothing(mcfg):
    model = Transformer(mcfg)
    seqs = [_tokens((n,), seed=n).tolist() for n in (3, 7)]
    tokens, mask = left_pad(seqs, pad_id=0)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    padded = compiled()(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
    for b, seq in enumerate(seqs):
        alone = compiled()(model, jnp.asarray([seq]))[0]
        np.testing.assert_allclose(padded[b, -len(seq) :], alone, atol=ATOL)


def test_changing_a_token_never_changes_the_logits_before_it(mcfg):
    model = Transformer(mcfg)
    seq = _tokens((1, 10), seed=4)
    changed = seq.copy()
    changed[0, 6] = (changed[0, 6] + 1) % 99 + 3
    pos = jnp.arange(10)[None]
    a, b = np.asarray(_forward(model, seq, pos)), np.asarray(_forward(model, changed, pos))
    np.testing.assert_array_equal(a[0, :6], b[0, :6])
    assert np.abs(a[0, 6:] - b[0, 6:]).max() > 1e-4


# ---------------------------------------------------------------------------- the pieces, alone


def _random(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape)


def test_absorbed_scores_equal_the_naive_scores():
    B, T, S, N, Hn, R, C = 2, 3, 7, 4, 16, 8, 12
    args = (
        _random((B, T, N, Hn), 0),
        _random((B, T, N, R), 1),
        _random((B, S, C), 2),
        _random((B, S, R), 3),
        _random((C, N, Hn), 4),
        0.2,
    )
    np.testing.assert_allclose(absorbed_scores(*args), naive_scores(*args), rtol=1e-5, atol=1e-5)


def test_absorbed_attention_equals_attention_over_rebuilt_keys_and_values():
    B, T, S, N, Hn, R, C, Hv = 2, 3, 7, 4, 16, 8, 12, 10
    q_nope, q_rope = _random((B, T, N, Hn), 0), _random((B, T, N, R), 1)
    c_kv, k_rope = _random((B, S, C), 2), _random((B, S, R), 3)
    w_uk, w_uv = _random((C, N, Hn), 4), _random((C, N, Hv), 5)
    mask = attention_mask(T, S, S - T)
    got = absorbed_attention(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, mask, 0.2)
    k = jnp.concatenate(
        [
            jnp.einsum("BSC,CNH->BSNH", c_kv, w_uk),
            jnp.broadcast_to(k_rope[:, :, None], (B, S, N, R)),
        ],
        axis=-1,
    )
    q = jnp.concatenate([q_nope, q_rope], axis=-1)
    v = jnp.einsum("BSC,CNH->BSNH", c_kv, w_uv)
    want = dot_product_attention(q, k, v, mask, 0.2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_latent_kv_is_what_the_module_caches(mcfg):
    model = Transformer(mcfg)
    attn: MLA = model.blocks[0].attn
    x = _random((2, 5, mcfg.d_model), 5)
    positions = jnp.broadcast_to(jnp.arange(5) + 3, (2, 5))
    _, cache = attn(x, positions, cache=attn.init_cache(2, 8), index=3)
    c_kv, k_rope = latent_kv(
        x,
        attn.wkv_a.kernel[...],
        attn.kv_norm.scale[...],
        positions,
        mcfg.mla.kv_lora_rank,
        mcfg.rope_theta,
        1e-6,
    )
    np.testing.assert_allclose(cache["c_kv"][:, 3:], c_kv, atol=1e-6)
    np.testing.assert_allclose(cache["k_rope"][:, 3:], k_rope, atol=1e-6)
    assert not np.any(cache["c_kv"][:, :3]) and not np.any(cache["c_kv"][:, 8:])


def test_decoupled_rope_scores_depend_only_on_the_position_difference(mcfg):
    """q_rope · k_rope at positions (m, n) equals that at (m + 11, n + 11): RoPE's relative property."""
    attn: MLA = Transformer(mcfg).blocks[0].attn
    x = _random((1, 6, mcfg.d_model), 6)
    tokens = x.reshape(6, -1)

    def rope_scores(offset):
        positions = jnp.arange(6)[None] + offset
        _, q_rope = attn.queries(tokens, positions)
        kv = jnp.einsum("BTD,DK->BTK", x, attn.wkv_a.kernel[...])
        _, k_rope = latent_kv(
            x,
            attn.wkv_a.kernel[...],
            attn.kv_norm.scale[...],
            positions,
            mcfg.mla.kv_lora_rank,
            mcfg.rope_theta,
        )
        assert kv.shape[-1] == mcfg.mla.kv_lora_rank + mcfg.mla.qk_rope_head_dim
        return jnp.einsum("BTNR,BSR->BNTS", q_rope, k_rope)

    np.testing.assert_allclose(rope_scores(0), rope_scores(11), rtol=1e-4, atol=1e-4)
    # ... and position does reach the scores: without the rotation they would not change with the gap.
    s = np.asarray(rope_scores(0))
    assert np.abs(s[0, 0, 5, 0] - s[0, 0, 5, 4]) > 1e-3


def test_whole_model_logits_do_not_change_when_all_positions_shift(mcfg):
    model = Transformer(mcfg)
    seq = _tokens((2, 8), seed=7)
    pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
    np.testing.assert_allclose(_forward(model, seq, pos), _forward(model, seq, pos + 9), atol=1e-4)


def test_fast_causal_attention_handles_a_value_width_and_scale_of_its_own():
    """MLA's training path: keys of width Hn + R, values of width Hv, scale 1/sqrt(Hn + R)."""
    q, k, v = _random((2, 128, 4, 24), 8), _random((2, 128, 4, 24), 9), _random((2, 128, 4, 8), 10)
    mask = attention_mask(128, 128)

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))

    fast = jax.jit(lambda q, k, v: causal_attention(q, k, v, 0.3))
    ref = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, mask, 0.3))
    np.testing.assert_allclose(fast(q, k, v), ref(q, k, v), atol=1e-5)
    for g_fast, g_ref in zip(
        jax.jit(jax.grad(loss(fast), argnums=(0, 1, 2)))(q, k, v),
        jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v),
        strict=True,
    ):
        np.testing.assert_allclose(g_fast, g_ref, atol=1e-4)


# --------------------------------------------------------------------------------- parameters


def test_count_params_equals_the_hand_count(mcfg):
    m, D, N, L = mcfg.mla, mcfg.d_model, mcfg.n_heads, mcfg.n_layers
    if m.q_lora_rank:
        query = D * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * N * m.qk_head_dim
    else:
        query = D * N * m.qk_head_dim
    kv = (
        D * (m.kv_lora_rank + m.qk_rope_head_dim)
        + m.kv_lora_rank
        + m.kv_lora_rank * N * (m.qk_nope_head_dim + m.v_head_dim)
    )
    attention = query + kv + N * m.v_head_dim * D
    V, F = mcfg.vocab_size, mcfg.ffn_dim
    expected = V * D + L * (attention + 3 * D * F + 2 * D) + D + D * V
    assert count_params(Transformer(mcfg)) == expected


def test_a_training_step_lowers_the_loss(mcfg):
    examples = generate_splits(seed=0, sizes={"train": 8, "val": 0, "test": 0}, tasks=["add"])[
        "train"
    ]
    arrays = encode_examples(examples, CharTokenizer(), mcfg.max_seq_len)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    model = Transformer(mcfg)
    tcfg = TrainConfig(steps=15, batch_size=8, lr=1e-2, warmup_steps=0)
    optimizer = make_optimizer(model, tcfg)
    losses = [float(train_step(model, optimizer, batch)["loss"]) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------ cache accounting


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "mla"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_accounting_equals_the_bytes_the_model_allocates(cfg, kind, dtype):
    if kind == "mla":
        c = cfg.replace(mla=MLA_CFG, dtype=dtype)
    else:
        c = cfg.replace(n_kv_heads={"mha": 4, "gqa": 2, "mqa": 1}[kind], dtype=dtype)
    B, S = 2, 9
    assert Transformer(c).init_cache(B, S).nbytes() == kv_cache_bytes_per_token(c) * B * S
    per_layer = {"mha": 2 * 4 * 8, "gqa": 2 * 2 * 8, "mqa": 2 * 8, "mla": 16 + 8}[kind]
    assert kv_cache_elements_per_token(c) == per_layer


def _paper_config(**fields):
    """Only the fields the cache depends on are real; the rest keep the defaults (never built)."""
    return dataclasses.replace(ModelConfig(), dtype="bfloat16", **fields)


def test_accounting_reproduces_the_papers_kv_cache_table():
    """PAPER_NUMBERS.md §2 (bf16, decimal KB): V3 70.272, Qwen-2.5 72B 327.680, LLaMA-3.1 405B 516.096."""
    v3 = _paper_config(
        n_layers=61,
        n_heads=128,
        n_kv_heads=128,
        head_dim=128,
        mla=MLAConfig(
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
        ),
    )
    qwen = _paper_config(n_layers=80, n_heads=64, n_kv_heads=8, head_dim=128)
    llama = _paper_config(n_layers=126, n_heads=128, n_kv_heads=8, head_dim=128)
    assert kv_cache_bytes_per_token(v3) == 70_272
    assert kv_cache_bytes_per_token(qwen) == 327_680
    assert kv_cache_bytes_per_token(llama) == 516_096
    # V2 Table 1: MLA's cache equals GQA's with 2.25 groups, (512 + 64) = 2.25 * 2 * 128.
    assert kv_cache_elements_per_token(v3) == 2.25 * 2 * 128

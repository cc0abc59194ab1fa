"""DeepSeek Sparse Attention (minids/dsa.py) and YaRN (minids/layers.py), as a specification.

Gathered sparse attention equals the masked reference; with no more tokens than top-k, DSA is MLA;
cached decoding equals the full pass; the warm-up trains the indexer alone and the sparse stage
keeps the two losses apart; YaRN's frequencies and temperatures are those of V3 §4.3.
"""

from __future__ import annotations

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from minids import data, dsa
from minids.attention import attention_mask
from minids.config import DSAConfig, MLAConfig, ModelConfig, YaRNConfig
from minids.layers import yarn_inv_freq, yarn_mscale, yarn_rope_factor, yarn_softmax_factor
from minids.model import Transformer
from minids.rewards import plain_accuracy_reward

MLA = MLAConfig(
    q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8
)
CFG = ModelConfig(
    vocab_size=32,
    d_model=32,
    n_layers=1,
    n_heads=4,
    ffn_dim=64,
    max_seq_len=64,
    mla=MLA.replace(dsa=DSAConfig(index_n_heads=4, index_head_dim=16, index_topk=6)),
    yarn=YaRNConfig(factor=4.0, original_max_position_embeddings=8, beta_fast=8.0),
)


_forward = nnx.jit(lambda model, tokens: model(tokens))


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG)


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(0).integers(3, 32, size=(2, 20)), jnp.int32)


def _inputs(key, B=2, T=5, S=20, N=4, Hn=8, R=8, C=16, Hv=8):
    ks = jax.random.split(key, 6)
    return (
        jax.random.normal(ks[0], (B, T, N, Hn)),
        jax.random.normal(ks[1], (B, T, N, R)),
        jax.random.normal(ks[2], (B, S, C)),
        jax.random.normal(ks[3], (B, S, R)),
        jax.random.normal(ks[4], (C, N, Hn)) / 4,
        jax.random.normal(ks[5], (C, N, Hv)) / 4,
    )


def test_gathered_sparse_attention_equals_the_masked_reference():
    T, S, offset = 8, 20, 12  # a chunk of queries after a cache; some see fewer than k keys
    q_nope, q_rope, c_kv, k_rope, w_uk, w_uv = _inputs(jax.random.key(0), T=T, S=S)
    key_mask = jnp.arange(S)[None, :] >= jnp.array([[0], [2]])  # the second row left-padded
    mask = attention_mask(T, S, offset, key_mask)
    scores = jax.random.normal(jax.random.key(1), (2, T, S))
    idx, valid = dsa.select_topk(jnp.where(mask, scores, -1e30), mask, 6)
    assert idx.shape == (2, T, 6)

    def both(c_kv):
        fast, _ = dsa.sparse_attention(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, idx, valid, 0.3)
        slow = dsa.sparse_attention_reference(
            q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, idx, mask, 0.3
        )
        return fast, slow

    seen = jnp.any(mask, axis=-1)[:, :, None, None]  # padding queries see nothing

    def values_and_grads(c_kv):  # the gather's backward is a scatter-add onto the chosen rows
        fast, slow = both(c_kv)
        g_fast = jax.grad(lambda c: jnp.sum(jnp.where(seen, both(c)[0], 0) ** 2))(c_kv)
        g_slow = jax.grad(lambda c: jnp.sum(jnp.where(seen, both(c)[1], 0) ** 2))(c_kv)
        return jnp.where(seen, fast, 0), jnp.where(seen, slow, 0), g_fast, g_slow

    fast, slow, g_fast, g_slow = jax.jit(values_and_grads)(c_kv)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    np.testing.assert_allclose(g_fast, g_slow, atol=1e-4)
    # a query never reads a later token
    assert not np.any(np.asarray(valid) & (np.asarray(idx) > offset + np.arange(T)[:, None]))


def test_index_scores_follow_eq_1():
    rng = np.random.default_rng(0)
    q, w, k = rng.normal(size=(1, 3, 2, 4)), rng.normal(size=(1, 3, 2)), rng.normal(size=(1, 5, 4))
    got = dsa.index_scores(jnp.asarray(q), jnp.asarray(w), jnp.asarray(k), attention_mask(3, 5, 2))
    want = np.einsum("tj,tjs->ts", w[0], np.maximum(np.einsum("tjd,sd->tjs", q[0], k[0]) / 2, 0))
    np.testing.assert_allclose(
        got[0], np.where(np.arange(5) <= 2 + np.arange(3)[:, None], want, -1e30), rtol=1e-5
    )


def test_with_no_more_tokens_than_topk_dsa_is_dense_mla(model, tokens):
    short = tokens[:, : CFG.mla.dsa.index_topk]
    dense = Transformer(CFG.replace(mla=MLA))
    nnx.update(dense, nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains("indexer")))))
    np.testing.assert_allclose(_forward(model, short), _forward(dense, short), atol=1e-5)


@nnx.jit
def _decode(model, tokens, positions, cache):
    return model.forward_cached(tokens, positions, cache)


def test_cached_decoding_uses_the_indexer_and_equals_the_full_pass(model, tokens):
    dsa.set_stage(model, "sparse")
    full = _forward(model, tokens)
    cache = model.init_cache(2, 24)
    assert cache.layers[0]["index_k"].shape == (2, 24, CFG.mla.dsa.index_head_dim)
    positions = jnp.broadcast_to(jnp.arange(20), (2, 20))
    logits, cache = _decode(model, tokens[:, :9], positions[:, :9], cache)  # prefill 9 tokens
    steps = [logits]
    for t in range(9, 20):  # then one at a time: from token 6 on, each step reads 6 of its past
        logits, cache = _decode(model, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-4)


def test_warmup_trains_the_indexer_alone_and_its_kl_falls(tokens):
    model = Transformer(CFG)
    dsa.set_stage(model, "warmup")
    before = {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    optimizer = dsa.indexer_optimizer(model, optax.adam(3e-2))
    batch = {"inputs": tokens}
    kls = [float(dsa.warmup_step(model, optimizer, batch)["indexer_kl"]) for _ in range(12)]
    assert kls[-1] < 0.7 * kls[0], kls
    for path, new in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert (not np.array_equal(before[path], new[...])) == ("indexer" in path), path
    assert 0.0 <= float(dsa.indexer_recall(model)) <= 1.0
    with pytest.raises(ValueError, match="stage 'sparse'"):
        dsa.sparse_step(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), batch)


def test_sparse_stage_keeps_the_two_losses_apart(model, tokens):
    dsa.set_stage(model, "sparse")

    def losses(model):
        logits = model(tokens)
        return jnp.mean(logits**2), dsa.indexer_loss(model)

    lm_grads, kl_grads = nnx.jit(
        lambda m: (nnx.grad(lambda m: losses(m)[0])(m), nnx.grad(lambda m: losses(m)[1])(m))
    )(model)
    for (path, g_lm), (_, g_kl) in zip(
        nnx.to_flat_state(lm_grads), nnx.to_flat_state(kl_grads), strict=True
    ):
        lm, kl = float(jnp.abs(g_lm[...]).max()), float(jnp.abs(g_kl[...]).max())
        if "indexer" in path:  # top-k has no gradient; the KL reaches the indexer
            assert lm == 0.0, path
        else:  # the KL's input is detached, its target constant
            assert kl == 0.0, path
    assert float(dsa.indexer_loss(model)) > 0.0


def test_stages_and_configs_are_checked(model):
    with pytest.raises(ValueError, match="stage must be one of"):
        dsa.set_stage(model, "sparse-ish")
    with pytest.raises(ValueError, match="no DSA layers"):
        dsa.set_stage(Transformer(CFG.replace(mla=MLA, n_layers=1)), "warmup")
    with pytest.raises(ValueError, match="q_lora_rank"):
        MLA.replace(q_lora_rank=0, dsa=DSAConfig())
    with pytest.raises(ValueError, match="index_head_dim"):
        MLA.replace(dsa=DSAConfig(index_head_dim=4))
    with pytest.raises(ValueError, match="index_topk"):
        DSAConfig(index_topk=0)
    back = ModelConfig.from_dict(CFG.to_dict())
    assert back == CFG and isinstance(back.mla.dsa, DSAConfig)


# ------------------------------------------------------------------------------------- YaRN


def test_yarn_keeps_fast_pairs_and_interpolates_slow_ones():
    plain = np.asarray(yarn_inv_freq(64, 10_000.0, None))
    v3 = YaRNConfig()  # s = 40 from 4096, beta 32 / 1
    scaled = np.asarray(yarn_inv_freq(64, 10_000.0, v3))
    turns = 4096 * plain / (2 * math.pi)  # how often each pair turns over the original context
    np.testing.assert_allclose(scaled[turns > 64], plain[turns > 64])  # well above beta_fast
    np.testing.assert_allclose(scaled[turns < 0.5], plain[turns < 0.5] / 40, rtol=1e-6)
    ratio = plain / scaled
    assert np.all(np.diff(ratio) >= -1e-4) and ratio.min() == 1.0
    assert ratio.max() == pytest.approx(40.0)
    assert np.sum((ratio > 1.01) & (ratio < 39.9)) >= 3  # a ramp, not a step
    np.testing.assert_allclose(yarn_inv_freq(64, 1e4, v3.replace(factor=1.0)), plain, rtol=1e-6)


def test_yarn_temperatures_match_v3():
    v3 = YaRNConfig()
    assert yarn_rope_factor(v3) == 1.0  # mscale = mscale_all_dim: rotated channels unscaled
    assert yarn_softmax_factor(v3) == pytest.approx((0.1 * math.log(40) + 1) ** 2)
    assert yarn_softmax_factor(None) == 1.0 and yarn_mscale(1.0) == 1.0
    only_factor = YaRNConfig(factor=4.0, mscale=0.0, mscale_all_dim=0.0)
    assert yarn_rope_factor(only_factor) == pytest.approx(0.1 * math.log(4) + 1)
    assert yarn_softmax_factor(only_factor) == 1.0
    with pytest.raises(ValueError, match="beta_fast"):
        YaRNConfig(beta_fast=1.0, beta_slow=2.0)
    with pytest.raises(ValueError, match="yarn.factor"):
        YaRNConfig(factor=0.5)


def test_gqa_with_yarn_decodes_as_it_scores():
    cfg = ModelConfig(
        vocab_size=32,
        d_model=32,
        n_layers=1,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        ffn_dim=64,
        max_seq_len=64,
        yarn=YaRNConfig(factor=4.0, original_max_position_embeddings=8),
    )
    model = Transformer(cfg)
    tokens = jnp.asarray(np.random.default_rng(1).integers(3, 32, size=(1, 16)), jnp.int32)
    full = _forward(model, tokens)
    logits, _ = _decode(model, tokens, jnp.arange(16)[None], model.init_cache(1, 16))
    np.testing.assert_allclose(logits, full, atol=1e-4)
    plain = Transformer(cfg.replace(yarn=None))
    nnx.update(plain, nnx.state(model))
    assert np.abs(np.asarray(_forward(plain, tokens) - full)).max() > 1e-3


# --------------------------------------------------------------------------- long-context tasks


@pytest.mark.parametrize("make", [data.kv_retrieval_task, data.passkey_task])
def test_long_context_tasks_grade_their_answers_at_any_length(make):
    for length in (128, 4096):
        task = make(length)
        for example in data.long_context_examples(task, 3, seed=length):
            assert abs(len(example["prompt"]) - length) <= 8
            assert task.check(example["prompt"], example["answer"])
            assert not task.check(example["prompt"], "9" + example["answer"])
            assert plain_accuracy_reward(example, f" {example['answer']} ") == 1.0
    assert data.long_context_examples(make(64), 2, 5) == data.long_context_examples(make(64), 2, 5)
    with pytest.raises(ValueError, match="length"):
        make(10**6)


def test_depth_places_the_needle():
    rng = random.Random(0)
    early, _ = data.kv_retrieval_example(rng, 400, depth=0.0)
    late, _ = data.kv_retrieval_example(rng, 400, depth=1.0)
    assert early.startswith(early.rsplit("?", 1)[1][:2]) and late.rsplit(";", 1)[1].startswith(
        late.rsplit("?", 1)[1][:2]
    )
    prompt, key = data.passkey_example(rng, 400, depth=0.5)
    assert abs(prompt.index("k" + key) - 200) < 5

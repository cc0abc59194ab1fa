"""The Transformer: causality, the KV cache (MHA, GQA, MQA, left-padded batches), parameter counts.

Tolerances are float32's: a cached forward pass adds the same numbers in a different order from
a full one, so logits agree to `ATOL = 1e-5`, not bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minids.config import preset
from minids.generate import left_pad
from minids.model import Transformer, count_params

ATOL = 1e-5


@nnx.jit
def _forward(model, tokens):
    return model(tokens)


@nnx.jit
def _forward_masked(model, tokens, positions, key_mask):
    return model(tokens, positions, key_mask)


@nnx.jit
def _forward_cached(model, tokens, positions, cache, token_mask):
    return model.forward_cached(tokens, positions, cache, token_mask)


def _tokens(shape, seed=0, vocab=99):
    return np.random.default_rng(seed).integers(3, vocab, size=shape).astype(np.int32)


def _logits_alone(model, seqs, width):
    """Each sequence's own logits, as if run alone: right-padded to `width` in one batch.

    Right padding is invisible to earlier positions (causality, tested above), and one shared
    width means one compilation instead of one per length.
    """
    batch = np.zeros((len(seqs), width), np.int32)
    for b, seq in enumerate(seqs):
        batch[b, : len(seq)] = seq
    logits = np.asarray(_forward(model, jnp.asarray(batch)))
    return [logits[b, : len(seq)] for b, seq in enumerate(seqs)]


@pytest.fixture(scope="module")
def model(cfg):
    return Transformer(cfg)


def test_logits_are_float32_of_shape_batch_time_vocab(model, cfg):
    logits = _forward(model, jnp.asarray(_tokens((2, 7))))
    assert logits.shape == (2, 7, cfg.vocab_size) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_changing_a_token_never_changes_the_logits_before_it(model):
    """Causality: row t of the batch changes token t + 1, which must leave positions <= t alone."""
    T = 12
    base = _tokens((T,), seed=1)
    variants = np.tile(base, (T - 1, 1))
    for t in range(T - 1):
        variants[t, t + 1] = 3 + (base[t + 1] - 3 + 1 + t) % 96  # a different token
    logits = np.asarray(_forward(model, jnp.asarray(np.concatenate([base[None], variants]))))
    ref, changed = logits[0], logits[1:]
    for t in range(T - 1):
        np.testing.assert_allclose(
            changed[t, : t + 1],
            ref[: t + 1],
            atol=1e-6,
            err_msg=f"changing token {t + 1} changed logits at positions <= {t}",
        )
        assert np.abs(changed[t, t + 1] - ref[t + 1]).max() > 1e-4, (
            "the changed token had no effect"
        )


def test_same_seed_gives_the_same_weights_and_a_different_seed_does_not(cfg):
    a, b, c = Transformer(cfg), Transformer(cfg), Transformer(cfg.replace(seed=1))
    tokens = jnp.asarray(_tokens((1, 5)))
    np.testing.assert_array_equal(np.asarray(_forward(a, tokens)), np.asarray(_forward(b, tokens)))
    assert not np.allclose(np.asarray(_forward(a, tokens)), np.asarray(_forward(c, tokens)))


def test_transformer_rejects_anything_but_a_model_config():
    with pytest.raises(TypeError, match="ModelConfig"):
        Transformer({"d_model": 32})


# ---------------------------------------------------------------------------------------- KV cache


def _decode_step_by_step(model, prompt, continuation):
    """Prefill `prompt` (B, P) into a cache, then feed `continuation` (B, C) one token at a time.

    Returns the logits (B, P + C, V) the cached path produced for every position.
    """
    B, P = prompt.shape
    C = continuation.shape[1]
    cache = model.init_cache(B, P + C)
    positions = jnp.broadcast_to(jnp.arange(P), (B, P))
    logits, cache = _forward_cached(
        model, jnp.asarray(prompt), positions, cache, jnp.ones((B, P), bool)
    )
    out = [logits]
    for i in range(C):
        pos = jnp.full((B, 1), P + i)
        step, cache = _forward_cached(
            model, jnp.asarray(continuation[:, i : i + 1]), pos, cache, jnp.ones((B, 1), bool)
        )
        out.append(step)
    assert int(cache.index) == P + C
    return np.concatenate([np.asarray(x) for x in out], axis=1)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_kv_cache_decode_matches_full_forward(cfg, n_kv_heads):
    model = Transformer(cfg.replace(n_kv_heads=n_kv_heads))
    seq = _tokens((2, 10), seed=2)
    cached = _decode_step_by_step(model, seq[:, :6], seq[:, 6:])
    full = np.asarray(_forward(model, jnp.asarray(seq)))
    np.testing.assert_allclose(cached, full, atol=ATOL)


def test_kv_cache_decode_of_left_padded_prompts_matches_each_unpadded_forward(model):
    """Prompts of lengths 3, 7 and 5 share one left-padded batch; each decodes as if alone."""
    lengths, n_new = (3, 7, 5), 4
    seqs = [_tokens((n + n_new,), seed=10 + n) for n in lengths]
    prompts = [s[:n].tolist() for s, n in zip(seqs, lengths, strict=True)]
    tokens, mask = left_pad(prompts, pad_id=0)
    B, P = tokens.shape
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)

    cache = model.init_cache(B, P + n_new)
    logits, cache = _forward_cached(
        model, jnp.asarray(tokens), jnp.asarray(positions), cache, jnp.asarray(mask)
    )
    last_prompt_logits = np.asarray(logits[:, -1])
    step_logits = []
    for i in range(n_new):
        new = np.array([[s[n + i]] for s, n in zip(seqs, lengths, strict=True)], np.int32)
        pos = np.array([[n + i] for n in lengths], np.int32)
        logits, cache = _forward_cached(
            model, jnp.asarray(new), jnp.asarray(pos), cache, jnp.ones((B, 1), bool)
        )
        step_logits.append(np.asarray(logits[:, 0]))

    alone_logits = _logits_alone(model, seqs, width=12)
    for b, (alone, n) in enumerate(zip(alone_logits, lengths, strict=True)):
        np.testing.assert_allclose(
            last_prompt_logits[b],
            alone[n - 1],
            atol=ATOL,
            err_msg=f"prompt {b} (length {n}): prefill logits",
        )
        for i in range(n_new - 1):
            np.testing.assert_allclose(
                step_logits[i][b],
                alone[n + i],
                atol=ATOL,
                err_msg=f"prompt {b} (length {n}): decode step {i}",
            )


def test_full_forward_with_left_padding_and_key_mask_matches_unpadded(model):
    """What `generate_recompute` relies on: padding before a sequence changes none of its logits."""
    seqs = [_tokens((n,), seed=20 + n).tolist() for n in (2, 8, 5)]
    tokens, mask = left_pad(seqs, pad_id=0)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits = np.asarray(
        _forward_masked(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
    )
    for b, (seq, alone) in enumerate(zip(seqs, _logits_alone(model, seqs, width=12), strict=True)):
        np.testing.assert_allclose(logits[b, -len(seq) :], alone, atol=ATOL)


def test_cache_holds_keys_and_values_of_every_layer(cfg, model):
    cache = model.init_cache(3, 16)
    assert len(cache.layers) == cfg.n_layers and cache.max_len == 16
    assert cache.nbytes() == 2 * cfg.n_layers * 3 * 16 * cfg.n_kv_heads * cfg.head_dim * 4
    assert not bool(cache.key_mask.any()) and int(cache.index) == 0


# ------------------------------------------------------------------------------------ parameters


def _hand_count(cfg, tied: bool) -> int:
    V, D, L, N, M, H, F = (
        cfg.vocab_size,
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.ffn_dim,
    )
    attention = D * N * H + 2 * D * M * H + N * H * D  # wq, wk, wv, wo (no biases)
    ffn = 3 * D * F  # gate, up, down
    norms = 2 * D  # before attention and before the FFN
    head = 0 if tied else D * V
    return V * D + L * (attention + ffn + norms) + D + head  # + final norm


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_count_params_equals_the_hand_count(cfg, tied):
    small = cfg.replace(
        tie_embeddings=tied,
        vocab_size=50,
        d_model=12,
        n_heads=6,
        n_kv_heads=3,
        head_dim=4,
        ffn_dim=20,
        n_layers=3,
    )
    abstract = nnx.eval_shape(lambda: Transformer(small))  # shapes only: nothing to initialise
    assert count_params(abstract) == _hand_count(small, tied)


def test_count_params_of_the_tiny_preset_is_about_half_a_million():
    cfg = preset("tiny")
    n = count_params(nnx.eval_shape(lambda: Transformer(cfg)))
    assert n == _hand_count(cfg, cfg.tie_embeddings) and 2e5 < n < 1e6


def test_tied_embeddings_use_the_embedding_table_as_the_output_head(cfg):
    model = Transformer(cfg.replace(tie_embeddings=True))
    assert model.lm_head is None

    @nnx.jit
    def logits_and_expected(model, tokens):
        x = model.embed(tokens)
        for block in model.blocks:
            x, _, _ = block(x, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
        return model(tokens), model.final_norm(x) @ model.embed.embed.embedding[...].T

    logits, expected = logits_and_expected(model, jnp.asarray(_tokens((2, 7))))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)


def test_bfloat16_compute_keeps_float32_weights_and_logits(cfg):
    model = Transformer(cfg.replace(dtype="bfloat16"))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    logits = _forward(model, jnp.asarray(_tokens((2, 7))))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))

"""minids against transformers for the long-context pieces: YaRN-scaled RoPE in a
`DeepseekV3ForCausalLM` at positions past `original_max_position_embeddings`, and DeepSeek-V3.2's
sparse attention in a `DeepseekV32ForCausalLM` on sequences longer than top-k, both randomly
initialised, saved, loaded with `minids.hf` and compared on logits to 1e-4 in float32.

Parity tests need the `parity` extra (torch, transformers) and carry the `parity` marker; the config
checks at the end need neither.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF_SMALL_V3, compiled

from minids import dsa
from minids.config import YaRNConfig
from minids.hf import config_from_hf, load_hf_deepseek

ATOL = 1e-4


def _yarn(factor=4.0, original=16, **extra):
    return {
        "rope_type": "yarn",
        "rope_theta": 500.0,
        "factor": factor,
        "original_max_position_embeddings": original,
        **extra,
    }


def _save_hf(cls_name: str, fields: dict, folder):
    """A transformers model with weights large enough that a wrong port shows in the logits."""
    torch = pytest.importorskip("torch", reason="the parity extra: pip install 'minids[parity]'")
    transformers = pytest.importorskip("transformers", reason="pip install 'minids[parity]'")
    config = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((0.0 if name.endswith("bias") else 1.0) + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.copy_(0.3 * torch.randn(8))
    model.save_pretrained(folder)
    return torch, model


def _compare(torch, reference, model, tokens):
    with torch.no_grad():
        want = reference(torch.as_tensor(tokens)).logits.numpy()
    got = np.asarray(compiled()(model, jnp.asarray(tokens, jnp.int32)))
    assert np.abs(want).max() > 1.0  # not two near-zero tensors
    return np.abs(got - want).max()


# YaRN as V3 ships it (mscale = mscale_all_dim = 1), with only a factor (the rotated channels
# then take the temperature), and with untruncated ramp ends and other betas.
YARN_CONFIGS = {
    "V3's fields": _yarn(mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1),
    "factor only": _yarn(factor=8.0),
    "betas 4 and 0.5, not truncated": _yarn(
        beta_fast=4, beta_slow=0.5, mscale=0.7, mscale_all_dim=1.0, truncate=False
    ),
}


@pytest.mark.parity
@pytest.mark.parametrize("name", list(YARN_CONFIGS))
def test_yarn_logits_equal_transformers_beyond_the_original_context(name, tmp_path):
    fields = {**HF_SMALL_V3, "rope_parameters": YARN_CONFIGS[name]}
    torch, reference = _save_hf("DeepseekV3ForCausalLM", fields, tmp_path)
    cfg, model = load_hf_deepseek(tmp_path)
    assert cfg.yarn is not None and cfg.yarn.original_max_position_embeddings == 16
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 48))  # 3x the original context
    assert _compare(torch, reference, model, tokens) <= ATOL
    # The test can fail: the same weights with plain RoPE give other logits.
    plain = load_hf_deepseek(tmp_path)[1]
    for block in plain.blocks:
        block.attn.yarn, block.attn.scale = None, cfg.mla.softmax_scale
    assert _compare(torch, reference, plain, tokens) > 1e-2


# Ties. A score is exactly 0 for every key whose ReLUs are all 0, and when a query's head weights
# are mostly negative its best scores are those zeros: torch.topk and jax.lax.top_k then keep
# different tokens among them. The tokens below (seed 0) give no tie at the boundary in these models;
# other seeds do (with 8 heads, 2 of the first 6 seeds change one query's choice in one layer).
V32_CONFIGS = {
    "top-8 of 40, 8 index heads of 16": dict(index_n_heads=8, index_head_dim=16, index_topk=8),
    "top-12 with YaRN, 16 index heads of 8": dict(
        index_n_heads=16,
        index_head_dim=8,
        index_topk=12,
        rope_parameters=_yarn(mscale=1.0, mscale_all_dim=1.0),
    ),
}


@pytest.mark.parity
@pytest.mark.parametrize("name", list(V32_CONFIGS))
def test_v32_sparse_logits_equal_transformers(name, tmp_path):
    fields = {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}, **HF_SMALL_V3}
    fields.update(V32_CONFIGS[name])
    torch, reference = _save_hf("DeepseekV32ForCausalLM", fields, tmp_path)
    cfg, model = load_hf_deepseek(tmp_path)
    k = cfg.mla.dsa.index_topk
    assert cfg.attention == "mla" and k == fields["index_topk"]
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 40))  # longer than top-k
    assert _compare(torch, reference, model, tokens) <= ATOL
    # Selection matters: the same model attending densely gives other logits.
    dsa.set_stage(model, "dense")
    assert _compare(torch, reference, model, tokens) > 1e-2


# ----------------------------------------------------------------- config checks (no torch needed)

V3_BASE = {**HF_SMALL_V3, "model_type": "deepseek_v3", "rope_theta": 10000.0}


def test_released_v3_rope_scaling_reads_as_yarn():
    released = {  # the rope_scaling block of DeepSeek-V3's config.json
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    }
    cfg = config_from_hf({**V3_BASE, "max_position_embeddings": 163840, "rope_scaling": released})
    assert cfg.yarn == YaRNConfig(factor=40.0, original_max_position_embeddings=4096)
    assert cfg.rope_theta == 10000.0


def test_v32_config_maps_the_indexer():
    cfg = config_from_hf(
        {**V3_BASE, "model_type": "deepseek_v32", "index_n_heads": 4, "index_head_dim": 16}
    )
    assert (cfg.mla.dsa.index_n_heads, cfg.mla.dsa.index_head_dim) == (4, 16)
    assert cfg.mla.dsa.index_topk == 2048 and cfg.moe.gate == "sigmoid"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope scaling"),
        ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0}, "rope scaling"),
        ("rope_parameters", {**_yarn(), "attention_factor": 1.5}, "attention_factor"),
        ("rope_parameters", _yarn(factor=0.5), "yarn.factor"),
    ],
)
def test_unsupported_rope_scalings_raise_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**V3_BASE, field: value})


def test_v32_layers_must_all_be_indexed():
    base = {**V3_BASE, "model_type": "deepseek_v32"}
    with pytest.raises(ValueError, match="layer_types"):
        config_from_hf({**base, "layer_types": ["full_attention", "indexed_attention"]})
    with pytest.raises(ValueError, match="q_lora_rank"):
        config_from_hf({**base, "q_lora_rank": None})

"""minids against the Hugging Face reference: a randomly initialised `DeepseekV3ForCausalLM` or
`DeepseekV2ForCausalLM`, built by transformers from a config in code (no download), saved, loaded with
`minids.hf`, gives the same logits to 1e-4 in float32.

These tests need the `parity` extra (torch, transformers, safetensors) and carry the `parity` marker;
without the extra they are skipped, saying so. The config checks at the end need neither.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF_SMALL_V3, compiled
from flax import nnx

from minids.hf import config_from_hf, load_hf_deepseek, load_hf_deepseek_v2, load_hf_deepseek_v3
from minids.model import Transformer

ATOL = 1e-4

# Several architectures: with and without query compression, different group settings, more than
# one leading dense layer, interleaved or half-split RoPE, a block eps other than the latent norms' 1e-6.
CONFIGS = {
    "q-lora, 4 groups of 2, 1 dense": dict(
        q_lora_rank=24, n_group=4, topk_group=2, first_k_dense_replace=1
    ),
    "no q compression, 2 dense": dict(
        q_lora_rank=None, n_group=2, topk_group=1, first_k_dense_replace=2, num_hidden_layers=4
    ),
    "1 group, eps 1e-5, 2 shared": dict(
        q_lora_rank=16,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        rms_norm_eps=1e-5,
        n_shared_experts=2,
        num_experts_per_tok=3,
    ),
    "rope not interleaved, tied": dict(
        q_lora_rank=24,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        rope_interleave=False,
        tie_word_embeddings=True,
    ),
    "gates not renormalised": dict(
        q_lora_rank=24, n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=False
    ),
}

# DeepSeek-V2's router: softmax scores, no bias, gates never renormalised, times routed_scaling_factor.
V2_CONFIGS = {
    # V2 proper: compressed queries, groups ranked by their best score (V2 §2.2.2), top 2 of 4 kept
    "V2: q-lora, group_limited_greedy 4 groups of 2": dict(
        q_lora_rank=24,
        topk_method="group_limited_greedy",
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        routed_scaling_factor=16.0,
    ),
    # V2-Lite: no query compression, a plain top-k over all experts
    "V2-Lite: no q compression, greedy, 2 shared": dict(
        q_lora_rank=None,
        topk_method="greedy",
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        n_shared_experts=2,
        num_experts_per_tok=3,
    ),
}


def _hf_model(overrides: dict, folder, family: str = "v3"):
    torch = pytest.importorskip(
        "torch", reason="the parity extra is not installed: pip install 'minids[parity]'"
    )
    transformers = pytest.importorskip("transformers", reason="pip install 'minids[parity]'")
    fields = {  # each architecture above sets its own query rank, groups and dense layers
        **HF_SMALL_V3,
        "num_hidden_layers": 3,
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
    }
    fields.update(overrides)
    if family == "v2":
        config = transformers.DeepseekV2Config(**fields)
        torch.manual_seed(0)
        model = transformers.DeepseekV2ForCausalLM(config).eval()
    else:
        config = transformers.DeepseekV3Config(**fields)
        torch.manual_seed(0)
        model = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():  # weights large enough that a wrong port shows in the logits
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate") and family == "v3":
                layer.mlp.gate.e_score_correction_bias.copy_(
                    0.3 * torch.randn(config.n_routed_experts)
                )
    model.save_pretrained(folder)
    return torch, model


def _logits(torch, reference, model, tokens):
    with torch.no_grad():
        want = reference(torch.as_tensor(tokens)).logits.numpy()
    return np.asarray(compiled()(model, jnp.asarray(tokens, jnp.int32))), want


@pytest.mark.parity
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_equal_the_transformers_model(name, tmp_path):
    torch, reference = _hf_model(CONFIGS[name], tmp_path)
    cfg, model = load_hf_deepseek_v3(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 17))
    got, want = _logits(torch, reference, model, tokens)
    assert np.abs(got - want).max() <= ATOL, f"max |difference| {np.abs(got - want).max():.2e}"
    assert np.abs(want).max() > 1.0  # the comparison is not between two near-zero tensors
    # The routing is exercised: more than K experts get tokens, so the bias and the groups matter.
    assert cfg.moe is not None and cfg.attention == "mla"
    assert cfg.moe.renormalizes == CONFIGS[name].get("norm_topk_prob", True)


@pytest.mark.parity
@pytest.mark.parametrize("name", list(V2_CONFIGS))
def test_v2_logits_equal_the_transformers_model(name, tmp_path):
    torch, reference = _hf_model(V2_CONFIGS[name], tmp_path, family="v2")
    cfg, model = load_hf_deepseek(tmp_path)  # dispatches on config.json's model_type
    assert cfg.moe.gate == "softmax" and not cfg.moe.renormalizes and not cfg.moe.uses_bias
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 17))
    got, want = _logits(torch, reference, model, tokens)
    assert np.abs(got - want).max() <= ATOL, f"max |difference| {np.abs(got - want).max():.2e}"
    assert np.abs(want).max() > 1.0
    if cfg.moe.n_groups > 1:
        # The groups matter here: ranking them V3's way (top-2 sum, the rule used with the aux-free
        # bias, zero in this model) instead of V2's (the best score) changes the logits.
        v3_rule = Transformer(cfg.replace(moe=cfg.moe.replace(balancing="aux_free")))
        nnx.update(v3_rule, nnx.state(model))
        other = np.asarray(compiled()(v3_rule, jnp.asarray(tokens, jnp.int32)))
        assert np.abs(other - want).max() > 1e-3


@pytest.mark.parity
def test_v2_loader_names_the_family(tmp_path):
    _hf_model(V2_CONFIGS["V2-Lite: no q compression, greedy, 2 shared"], tmp_path, family="v2")
    cfg, _ = load_hf_deepseek_v2(tmp_path)
    assert cfg.mla.q_lora_rank == 0 and cfg.moe.n_groups == 1
    with pytest.raises(ValueError, match="model_type"):
        load_hf_deepseek_v3(tmp_path)


@pytest.mark.parity
def test_a_wrong_rope_pairing_would_be_caught(tmp_path):
    """The test above can fail: loading interleaved weights as if they were half-split breaks parity."""
    torch, reference = _hf_model(CONFIGS["q-lora, 4 groups of 2, 1 dense"], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_interleave"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    _, model = load_hf_deepseek_v3(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 64, size=(1, 17))
    got, want = _logits(torch, reference, model, tokens)
    assert np.abs(got - want).max() > 1e-2


# ----------------------------------------------------------------- config checks (no torch needed)

BASE = {
    **HF_SMALL_V3,
    "model_type": "deepseek_v3",
    "num_hidden_layers": 3,
    "v_head_dim": 8,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}


def test_config_maps_every_field():
    cfg = config_from_hf(BASE)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.vocab_size) == (
        32,
        3,
        4,
        48,
        64,
    )
    assert (cfg.mla.q_lora_rank, cfg.mla.kv_lora_rank, cfg.mla.qk_rope_head_dim) == (24, 16, 8)
    m = cfg.moe
    assert (m.n_routed_experts, m.n_shared_experts, m.experts_per_token, m.expert_ffn_dim) == (
        8,
        1,
        2,
        16,
    )
    assert (m.gate, m.route_scale, m.n_groups, m.groups_per_token, m.n_dense_layers) == (
        "sigmoid",
        2.5,
        4,
        2,
        1,
    )
    assert m.uses_bias and not cfg.tie_embeddings
    assert config_from_hf({**BASE, "q_lora_rank": None}).mla.q_lora_rank == 0


@pytest.mark.parametrize(
    "field, value, message",
    [
        (  # YaRN loads (tests/test_hf_parity_long.py); other scalings do not
            "rope_parameters",
            {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4},
            "rope scaling",
        ),
        ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope scaling"),
        ("attention_bias", True, "attention_bias"),
        ("norm_topk_prob", "yes", "norm_topk_prob"),
        ("mlp_bias", True, "mlp_bias"),
        ("moe_layer_freq", 2, "moe_layer_freq"),
        ("hidden_act", "gelu", "hidden_act"),
        ("num_key_value_heads", 2, "num_key_value_heads"),
        ("model_type", "llama", "model_type"),
        ("scoring_func", "softmax", "scoring_func"),
    ],
)
def test_unsupported_settings_raise_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**BASE, field: value})


def test_v3_gates_may_skip_renormalisation():
    assert config_from_hf(BASE).moe.renormalizes
    m = config_from_hf({**BASE, "norm_topk_prob": False}).moe
    assert m.norm_topk_prob is False and not m.renormalizes and m.route_scale == 2.5


V2_BASE = {
    **BASE,
    "model_type": "deepseek_v2",
    "topk_method": "group_limited_greedy",
    "routed_scaling_factor": 16.0,
    "norm_topk_prob": False,
}


def test_v2_config_maps_every_field():
    cfg = config_from_hf(V2_BASE)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.vocab_size) == (
        32,
        3,
        4,
        48,
        64,
    )
    assert (cfg.mla.q_lora_rank, cfg.mla.kv_lora_rank, cfg.mla.qk_rope_head_dim) == (24, 16, 8)
    m = cfg.moe
    assert (m.n_routed_experts, m.n_shared_experts, m.experts_per_token, m.expert_ffn_dim) == (
        8,
        1,
        2,
        16,
    )
    assert (m.gate, m.route_scale, m.n_groups, m.groups_per_token, m.n_dense_layers) == (
        "softmax",
        16.0,
        4,
        2,
        1,
    )
    assert not m.uses_bias and not m.renormalizes and m.balancing == "aux_loss"
    assert config_from_hf({**V2_BASE, "seq_aux": True}).moe.balancing == "seq_aux_loss"
    # greedy ignores the groups; V2-Lite has no query compression
    lite = config_from_hf({**V2_BASE, "topk_method": "greedy", "q_lora_rank": None})
    assert (lite.moe.n_groups, lite.moe.groups_per_token, lite.mla.q_lora_rank) == (1, 1, 0)
    # the family can be told by the class name alone
    by_class = {k: v for k, v in V2_BASE.items() if k != "model_type"}
    assert (
        config_from_hf({**by_class, "architectures": ["DeepseekV2ForCausalLM"]}).moe.gate
        == "softmax"
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("topk_method", "noaux_tc", "topk_method.*'greedy' or 'group_limited_greedy'"),
        ("norm_topk_prob", True, "norm_topk_prob"),
        ("scoring_func", "sigmoid", "scoring_func"),
        ("n_group", None, "n_group"),
        ("rope_scaling", {"type": "linear", "factor": 4.0}, "rope scaling"),
        ("mlp_bias", True, "mlp_bias"),
    ],
)
def test_v2_unsupported_settings_raise_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**V2_BASE, field: value})


def test_a_config_of_unknown_family_raises():
    no_type = {k: v for k, v in BASE.items() if k != "model_type"}
    with pytest.raises(ValueError, match="architectures"):
        config_from_hf({**no_type, "architectures": ["LlamaForCausalLM"]})


def test_a_folder_without_config_raises(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_hf_deepseek_v3(tmp_path)

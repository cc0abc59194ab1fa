"""Load a Hugging Face DeepSeek-V2 or DeepSeek-V3 folder (config.json + safetensors) into minids.

`load_hf_deepseek(path)` reads a local `DeepseekV2ForCausalLM` or `DeepseekV3ForCausalLM` folder,
chosen by its `model_type` (or, failing that, its `architectures`), and returns `(cfg, model)`: a
minids `ModelConfig` with the same architecture and a `Transformer` holding the same weights, so that
both give the same logits (`tests/test_hf_parity.py` checks this against transformers to 1e-4 in
float32). `load_hf_deepseek_v3` and `load_hf_deepseek_v2` do the same for one family only. Nothing
is downloaded: `path` is a local folder, e.g. one written by `save_pretrained`.

The details that make a port subtly wrong, and what this loader does with each:

- **RoPE pairing.** DeepSeek's weights rotate interleaved channel pairs (0, 1), (2, 3), ...
  (V3: `rope_interleave`, true by default; V2: always, transformers views adjacent pairs as complex
  numbers); minids rotates (i, i + R/2). Permuting the rope output rows of the query and shared-key
  projections to [0, 2, 4, ..., 1, 3, 5, ...] makes one equal the other, since queries and keys are
  permuted alike and their dot products are unchanged.
- **Router scores.** V3: sigmoid affinities (V3 eq. 15); V2: a softmax over all routed experts
  (V2 §2.2, eq. 22). minids' `MoEConfig.gate`.
- **Score-correction bias.** `e_score_correction_bias` is V3's aux-free bias b: it goes to
  `MoE.aux_free_bias` and only affects which experts are chosen, never the gate values. V2 has no
  such bias, so its config gets a balancing loss (`aux_loss`, or `seq_aux_loss` where `seq_aux` is
  set), never `aux_free`; the loss only matters in training and does not change the logits.
- **Group-limited top-k** (`n_group` groups, `topk_group` kept: minids' `n_groups` /
  `groups_per_token`). V3 ranks the groups by the sum of their two best biased scores; V2's
  `topk_method="group_limited_greedy"` ranks them by their single best score (V2 §2.2.2,
  device-limited routing). minids' `select_experts` applies the first rule when the config uses the
  aux-free bias and the second when it does not, which is what the balancing above selects. V2's
  `greedy` ignores the groups: one group.
- **Gates.** The chosen experts' scores, times `routed_scaling_factor` (minids' `route_scale`),
  normalised over the K chosen first when `norm_topk_prob` is set (minids'
  `MoEConfig.norm_topk_prob`). V3 defaults to normalising; V2 never normalises: transformers'
  `DeepseekV2ForCausalLM` ignores `norm_topk_prob`, so a V2 config must leave it false (every
  released V2 checkpoint does) rather than leave the intended numbers in doubt.
- **YaRN** (`rope_parameters` or, in V2's and V3's released configs, `rope_scaling` of type
  `yarn`: V3 has factor 40 from 4096 positions, mscale and mscale_all_dim 1.0) becomes
  `ModelConfig.yarn`, read as transformers reads it (see minids/layers.py for the fields and where
  DeepSeek's own code differs).
- **DeepSeek-V3.2** (`deepseek_v32`): V3 with a lightning indexer in every layer (`index_n_heads`,
  `index_head_dim`, `index_topk`: `MLAConfig.dsa`, minids/dsa.py). Its weights (`indexer.wq_b`,
  `wk`, `k_norm` with a bias, `weights_proj`) load unpermuted: the indexer rotates half-split pairs,
  as minids does, while the main attention's rope rows are permuted as above.
- **Untied embeddings**, the **RMSNorm eps** of the blocks (`rms_norm_eps`; the MLA latent norms
  use 1e-6 in DeepSeek's code whatever it says, as minids does), the **leading dense layers**
  (`first_k_dense_replace`), **uncompressed queries** (`q_lora_rank` null, as in V2-Lite: minids'
  `q_lora_rank=0`), and the expert weights stored either per expert (`experts.{i}.gate_proj`) or
  fused (`experts.gate_up_proj`).

Settings minids does not implement raise `ValueError` naming the field and what is allowed, instead
of loading something that would quietly compute other numbers: a RoPE scaling type other than YaRN,
attention or MLP biases, a scoring function other than the
family's own, another `topk_method`, fewer key/value heads than heads, MoE layers interleaved with
dense ones (`moe_layer_freq` > 1).

Multi-token prediction. DeepSeek-V3's released weights hold `num_nextn_predict_layers` MTP modules
as extra layers after the main ones (README_WEIGHTS.md: layer 61 of V3), each with `enorm`, `hnorm`,
`eh_proj` (minids' M_k, embedding half first), a block (`self_attn`, `mlp` and its two norms, like
a main layer) and `shared_head` (`norm`, minids' `head_norm`, and `head`, a copy of `lm_head`);
some checkpoints also store a copy of the embedding there (`embed_tokens`). When those weights are
in the folder, the model is built with `cfg.mtp` and loads them (`mtp=False` skips them); the
copies of the embedding and head must equal the main model's, which minids shares. transformers'
own model has no MTP layer, so a folder it wrote has none, whatever its config says.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from minids.config import DSAConfig, MLAConfig, ModelConfig, MoEConfig, MTPConfig, YaRNConfig
from minids.model import Transformer

# model_type -> the transformers class name of each family this module reads
FAMILIES = {
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",  # V3 + DSA's lightning indexer (minids/dsa.py)
}


def _yarn(hf: dict, rope: dict) -> YaRNConfig | None:
    """YaRN from `rope_parameters` (transformers 5) or `rope_scaling` (V2/V3's released configs).

    Missing fields take transformers' values: beta 32 / 1, `original_max_position_embeddings` =
    `max_position_embeddings`, no mscale (0), truncated ramp ends.
    """
    scaling = hf.get("rope_scaling") or rope  # transformers reads an old rope_scaling first
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind != "yarn" or scaling.get("attention_factor") is not None:
        raise _unsupported(
            "rope scaling",
            {k: v for k, v in scaling.items() if k != "rope_theta"},
            "plain RoPE (rope_type 'default') or YaRN ('yarn', without an explicit attention_factor)",
        )
    original = scaling.get("original_max_position_embeddings") or hf.get(
        "max_position_embeddings", 4096
    )
    factor = scaling.get("factor")
    return YaRNConfig(
        factor=float(factor if factor is not None else hf["max_position_embeddings"] / original),
        original_max_position_embeddings=int(original),
        beta_fast=float(scaling.get("beta_fast") or 32),
        beta_slow=float(scaling.get("beta_slow") or 1),
        mscale=float(scaling.get("mscale") or 0.0),
        mscale_all_dim=float(scaling.get("mscale_all_dim") or 0.0),
        truncate=bool(scaling.get("truncate", True)),
    )


def _dsa(hf: dict) -> DSAConfig:
    """V3.2's indexer: `index_n_heads`, `index_head_dim`, `index_topk` (every layer indexed)."""
    n = hf["num_hidden_layers"]
    n_dense = min(hf.get("first_k_dense_replace") or 0, n)
    expected = ["dense"] * n_dense + ["sparse"] * (n - n_dense)
    if hf.get("mlp_layer_types") not in (None, expected):
        raise _unsupported(
            "mlp_layer_types", hf["mlp_layer_types"], f"{expected} (first_k_dense_replace dense)"
        )
    if hf.get("layer_types") not in (None, ["indexed_attention"] * n):
        raise _unsupported("layer_types", hf["layer_types"], "'indexed_attention' in every layer")
    return DSAConfig(
        index_n_heads=hf.get("index_n_heads", 64),
        index_head_dim=hf.get("index_head_dim", 128),
        index_topk=hf.get("index_topk", 2048),
    )


def _unsupported(field: str, value, allowed: str) -> ValueError:
    return ValueError(f"config.json: {field} = {value!r} is not supported by minids ({allowed})")


def model_type_of(hf: dict) -> str:
    """'deepseek_v2' or 'deepseek_v3' from a config.json dict: its `model_type`, else `architectures`."""
    kind = hf.get("model_type")
    if kind is None:  # a hand-written config: fall back on the class name
        by_class = {name: key for key, name in FAMILIES.items()}
        kinds = {by_class[a] for a in hf.get("architectures") or () if a in by_class}
        if len(kinds) == 1:
            return kinds.pop()
        raise _unsupported(
            "model_type / architectures",
            hf.get("architectures"),
            f"model_type one of {sorted(FAMILIES)} or architectures one of "
            f"{sorted(FAMILIES.values())}",
        )
    if kind not in FAMILIES:
        raise _unsupported("model_type", kind, f"one of {sorted(FAMILIES)}")
    return kind


def _check(hf: dict, checks) -> None:
    """Raise for the first (field, default, allowed values, rule) whose value is not allowed."""
    for field, default, allowed, rule in checks:
        value = hf.get(field, default)
        if value not in allowed:
            raise _unsupported(field, value, rule)


def _common(hf: dict) -> tuple[dict, float]:
    """The checks and fields V2 and V3 share: attention, norms, RoPE, dense FFN, embeddings."""
    rope = hf.get("rope_parameters") or {}
    yarn = _yarn(hf, rope)
    _check(
        hf,
        [
            ("hidden_act", "silu", ("silu",), "'silu' only: SwiGLU"),
            ("attention_bias", False, (False,), "false only: projections without biases"),
            ("mlp_bias", False, (False,), "false only: feed-forward layers without biases"),
            ("pretraining_tp", 1, (1, None), "1 only"),
            ("moe_layer_freq", 1, (1,), "1 only: every layer after first_k_dense_replace is MoE"),
        ],
    )
    n_heads = hf["num_attention_heads"]
    if hf.get("num_key_value_heads") not in (None, n_heads):
        raise _unsupported(
            "num_key_value_heads",
            hf.get("num_key_value_heads"),
            f"MLA expands to all {n_heads} heads; it must equal num_attention_heads",
        )
    mla = MLAConfig(
        q_lora_rank=hf.get("q_lora_rank") or 0,
        kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"],
        dsa=_dsa(hf) if model_type_of(hf) == "deepseek_v32" else None,
    )
    fields = dict(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=hf["qk_rope_head_dim"],
        ffn_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 4096),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        mla=mla,
        yarn=yarn,
    )
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    return fields, theta


def _moe_v3(hf: dict, n_dense: int) -> MoEConfig:
    _check(
        hf,
        [
            ("scoring_func", "sigmoid", ("sigmoid",), "'sigmoid' only for DeepSeek-V3"),
            ("topk_method", "noaux_tc", ("noaux_tc",), "'noaux_tc' only: V3's routing"),
            (
                "norm_topk_prob",
                True,
                (True, False, None),
                "true, false or null (= false, as in transformers)",
            ),
        ],
    )
    return MoEConfig(
        n_routed_experts=hf["n_routed_experts"],
        n_shared_experts=hf.get("n_shared_experts") or 0,
        experts_per_token=hf["num_experts_per_tok"],
        expert_ffn_dim=hf["moe_intermediate_size"],
        gate="sigmoid",
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),  # absent: true; null: false
        route_scale=float(hf.get("routed_scaling_factor", 1.0)),
        n_groups=hf.get("n_group") or 1,
        groups_per_token=hf.get("topk_group") or 1,
        balancing="aux_free+seq_aux_loss",
        n_dense_layers=n_dense,
    )


def _moe_v2(hf: dict, n_dense: int) -> MoEConfig:
    _check(
        hf,
        [
            ("scoring_func", "softmax", ("softmax",), "'softmax' only for DeepSeek-V2"),
            (
                "topk_method",
                "greedy",
                ("greedy", "group_limited_greedy"),
                "'greedy' or 'group_limited_greedy'",
            ),
            (
                "norm_topk_prob",
                False,
                (False, None),
                "false only: transformers' DeepseekV2 never renormalises the top-k gates (it ignores this "
                "field) while DeepSeek's original code renormalises and drops routed_scaling_factor, so the "
                "intended numbers are ambiguous",
            ),
        ],
    )
    groups, kept = 1, 1  # greedy: a plain top-k over all experts
    if hf.get("topk_method", "greedy") == "group_limited_greedy":
        for field in ("n_group", "topk_group"):
            if not isinstance(hf.get(field), int) or hf[field] < 1:
                raise _unsupported(
                    field, hf.get(field), "a positive int with topk_method 'group_limited_greedy'"
                )
        groups, kept = hf["n_group"], hf["topk_group"]
    return MoEConfig(
        n_routed_experts=hf["n_routed_experts"],
        n_shared_experts=hf.get("n_shared_experts") or 0,
        experts_per_token=hf["num_experts_per_tok"],
        expert_ffn_dim=hf["moe_intermediate_size"],
        gate="softmax",
        norm_topk_prob=False,
        route_scale=float(hf.get("routed_scaling_factor", 1.0)),
        n_groups=groups,
        groups_per_token=kept,
        # no aux-free bias: select_experts then ranks groups by their best score, as V2 does
        balancing="seq_aux_loss" if hf.get("seq_aux") else "aux_loss",
        n_dense_layers=n_dense,
    )


def config_from_hf(hf: dict, dtype: str = "float32") -> ModelConfig:
    """A minids `ModelConfig` for a Hugging Face DeepSeek-V2 or -V3 `config.json` (as a dict)."""
    kind = model_type_of(hf)
    fields, theta = _common(hf)
    n_layers, n_dense = fields["n_layers"], hf.get("first_k_dense_replace") or 0
    moe = None
    if n_dense < n_layers:
        moe = (_moe_v2 if kind == "deepseek_v2" else _moe_v3)(hf, n_dense)  # V3.2 routes as V3
    return ModelConfig(**fields, rope_theta=theta, dtype=dtype, moe=moe)


def _read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors import safe_open
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading Hugging Face weights needs safetensors: pip install 'minids[parity]' "
            "or pip install safetensors"
        ) from error
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {folder}")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="flax") as f:  # jax arrays: bfloat16 survives
            for key in f.keys():
                tensors[key] = np.asarray(jnp.asarray(f.get_tensor(key), jnp.float32))
    return tensors


def _deinterleave(rows: int) -> np.ndarray:
    """Row order that turns interleaved RoPE pairs (2i, 2i + 1) into minids' (i, i + R/2)."""
    return np.concatenate([np.arange(0, rows, 2), np.arange(1, rows, 2)])


class _Weights:
    """The checkpoint's tensors, handed out once each, so that leftovers can be reported."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors, self.used = tensors, set()

    def take(self, key: str) -> np.ndarray:
        if key not in self.tensors:
            raise ValueError(f"the checkpoint has no tensor {key!r}")
        self.used.add(key)
        return self.tensors[key]

    def has(self, key: str) -> bool:
        return key in self.tensors


def _set(variable, value: np.ndarray, key: str) -> None:
    target = variable[...]
    if tuple(target.shape) != tuple(value.shape):
        raise ValueError(
            f"{key}: expected shape {tuple(target.shape)} for minids, got {tuple(value.shape)}"
        )
    variable[...] = jnp.asarray(value, target.dtype)


def _load_linear(layer, w: _Weights, key: str, rows: np.ndarray | None = None) -> None:
    weight = w.take(key)  # torch layout (out, in); minids kernels are (in, out)
    if rows is not None:
        weight = weight[rows]
    _set(layer.kernel, weight.T, key)


def _load_attention(attn, w: _Weights, prefix: str, cfg: ModelConfig, interleaved: bool) -> None:
    m, N = cfg.mla, cfg.n_heads
    R, Hqk = m.qk_rope_head_dim, m.qk_head_dim
    perm_r = _deinterleave(R) if interleaved else np.arange(R)
    q_rows = np.concatenate(
        [
            h * Hqk + np.concatenate([np.arange(m.qk_nope_head_dim), m.qk_nope_head_dim + perm_r])
            for h in range(N)
        ]
    )
    kv_rows = np.concatenate([np.arange(m.kv_lora_rank), m.kv_lora_rank + perm_r])
    if m.q_lora_rank:
        _load_linear(attn.wq_a, w, f"{prefix}.q_a_proj.weight")
        _set(
            attn.q_norm.scale,
            w.take(f"{prefix}.q_a_layernorm.weight"),
            f"{prefix}.q_a_layernorm.weight",
        )
        _load_linear(attn.wq_b, w, f"{prefix}.q_b_proj.weight", q_rows)
    else:
        _load_linear(attn.wq, w, f"{prefix}.q_proj.weight", q_rows)
    _load_linear(attn.wkv_a, w, f"{prefix}.kv_a_proj_with_mqa.weight", kv_rows)
    _set(
        attn.kv_norm.scale,
        w.take(f"{prefix}.kv_a_layernorm.weight"),
        f"{prefix}.kv_a_layernorm.weight",
    )
    _load_linear(attn.wkv_b, w, f"{prefix}.kv_b_proj.weight")
    _load_linear(attn.wo, w, f"{prefix}.o_proj.weight")
    if m.dsa is not None:  # V3.2's indexer: half-split RoPE, as minids', so no rows permuted
        indexer = attn.indexer
        for name in ("wq_b", "wk", "weights_proj"):
            _load_linear(getattr(indexer, name), w, f"{prefix}.indexer.{name}.weight")
        for name, hf_name in (("scale", "weight"), ("bias", "bias")):
            key = f"{prefix}.indexer.k_norm.{hf_name}"
            _set(getattr(indexer.k_norm, name), w.take(key), key)


def _load_swiglu(mlp, w: _Weights, prefix: str) -> None:
    for name, hf_name in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        _load_linear(getattr(mlp, name), w, f"{prefix}.{hf_name}.weight")


def _load_moe(moe, w: _Weights, prefix: str, cfg: ModelConfig) -> None:
    E, F = cfg.moe.n_routed_experts, cfg.moe.expert_ffn_dim
    _set(moe.expert_centroids, w.take(f"{prefix}.gate.weight"), f"{prefix}.gate.weight")
    bias_key = f"{prefix}.gate.e_score_correction_bias"
    if w.has(bias_key):
        _set(moe.aux_free_bias, w.take(bias_key), bias_key)
    if w.has(f"{prefix}.experts.gate_up_proj"):  # fused: (E, 2F, D) and (E, D, F)
        gate_up = w.take(f"{prefix}.experts.gate_up_proj")
        gate, up = gate_up[:, :F], gate_up[:, F:]
        down = w.take(f"{prefix}.experts.down_proj")
    else:  # one module per expert, the layout of DeepSeek's released checkpoints
        gate, up, down = (
            np.stack([w.take(f"{prefix}.experts.{e}.{name}.weight") for e in range(E)])
            for name in ("gate_proj", "up_proj", "down_proj")
        )
    _set(moe.routed_gate, gate.transpose(0, 2, 1), f"{prefix}.experts (gate)")
    _set(moe.routed_up, up.transpose(0, 2, 1), f"{prefix}.experts (up)")
    _set(moe.routed_down, down.transpose(0, 2, 1), f"{prefix}.experts (down)")
    if moe.shared_experts is not None:
        _load_swiglu(moe.shared_experts, w, f"{prefix}.shared_experts")
    else:  # transformers' V2 builds a zero-width shared MLP when n_shared_experts is 0
        for name in ("gate_proj", "up_proj", "down_proj"):
            key = f"{prefix}.shared_experts.{name}.weight"
            if w.has(key) and w.take(key).size:
                raise ValueError(f"{key} holds weights but the config has n_shared_experts = 0")


def _mtp_depth(hf: dict, w: _Weights, mtp: bool | None) -> int:
    """How many MTP modules to load: those of `num_nextn_predict_layers` whose weights are there."""
    wanted = hf.get("num_nextn_predict_layers") or 0
    first = hf["num_hidden_layers"]
    present = sum(w.has(f"model.layers.{first + k}.eh_proj.weight") for k in range(wanted))
    if mtp is False:
        return 0
    if mtp and not present:
        raise ValueError(
            f"mtp=True, but the checkpoint holds no MTP layer (model.layers.{first}.eh_proj.weight; "
            f"num_nextn_predict_layers = {wanted})"
        )
    if present not in (0, wanted):
        raise ValueError(
            f"num_nextn_predict_layers = {wanted} but the checkpoint holds {present} MTP layers"
        )
    return present


def _load_mtp(model: Transformer, w: _Weights, interleaved: bool) -> None:
    """Each MTP layer (index num_hidden_layers + k) into `model.mtp[k]` (see the module docstring)."""
    cfg = model.cfg
    for k, module in enumerate(model.mtp):
        prefix = f"model.layers.{cfg.n_layers + k}"
        for name, norm in (
            ("enorm", module.enorm),
            ("hnorm", module.hnorm),
            ("shared_head.norm", module.head_norm),
        ):
            _set(norm.scale, w.take(f"{prefix}.{name}.weight"), f"{prefix}.{name}.weight")
        _load_linear(module.eh_proj, w, f"{prefix}.eh_proj.weight")
        _load_block(module.block, w, prefix, cfg, interleaved)
        shared = [(f"{prefix}.embed_tokens.weight", model.embed.embed.embedding[...])]
        head = model.embed.embed.embedding if model.lm_head is None else model.lm_head.kernel
        head = head[...] if model.lm_head is None else head[...].T
        shared.append((f"{prefix}.shared_head.head.weight", head))
        for key, main in shared:
            if w.has(key) and not np.array_equal(w.take(key), np.asarray(main, np.float32)):
                raise ValueError(
                    f"{key} differs from the main model's; minids' MTP modules share the "
                    "embedding and the output head with it (V3 §2.2)"
                )


def _load_block(block, w: _Weights, prefix: str, cfg: ModelConfig, interleaved: bool) -> None:
    _set(
        block.attn_norm.scale,
        w.take(f"{prefix}.input_layernorm.weight"),
        f"{prefix}.input_layernorm",
    )
    _set(
        block.ffn_norm.scale,
        w.take(f"{prefix}.post_attention_layernorm.weight"),
        f"{prefix}.post_attention_layernorm",
    )
    _load_attention(block.attn, w, f"{prefix}.self_attn", cfg, interleaved)
    if block.use_moe:
        _load_moe(block.ffn, w, f"{prefix}.mlp", cfg)
    else:
        _load_swiglu(block.ffn, w, f"{prefix}.mlp")


def load_hf_deepseek(
    path: str | Path, *, dtype: str = "float32", family: str | None = None, mtp: bool | None = None
) -> tuple[ModelConfig, Transformer]:
    """Read a local DeepSeek-V2 or -V3 folder; return (minids config, minids model with its weights).

    `family` ('deepseek_v2' or 'deepseek_v3'), when given, is checked against the folder's config.
    `mtp`: None loads the MTP layers when the folder holds them, True requires them, False skips them.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: pass a folder written by save_pretrained")
    hf = json.loads(config_file.read_text())
    kind = model_type_of(hf)
    if family is not None and kind != family:
        raise _unsupported(
            "model_type",
            kind,
            f"{family!r} for this loader; load_hf_deepseek reads any of {sorted(FAMILIES)}",
        )
    cfg = config_from_hf(hf, dtype=dtype)
    w = _Weights(_read_safetensors(folder))
    depth = _mtp_depth(hf, w, mtp)
    if depth:
        cfg = cfg.replace(mtp=MTPConfig(depth=depth))
    model = Transformer(cfg)
    _set(
        model.embed.embed.embedding,
        w.take("model.embed_tokens.weight"),
        "model.embed_tokens.weight",
    )
    # V2 always rotates interleaved pairs (transformers ignores any rope_interleave); V3 may not
    interleaved = kind == "deepseek_v2" or bool(hf.get("rope_interleave", True))
    for i, block in enumerate(model.blocks):
        _load_block(block, w, f"model.layers.{i}", cfg, interleaved)
    _set(model.final_norm.scale, w.take("model.norm.weight"), "model.norm.weight")
    if model.lm_head is not None:
        _load_linear(model.lm_head, w, "lm_head.weight")
    if depth:
        _load_mtp(model, w, interleaved)
    beyond = tuple(f"model.layers.{i}." for i in range(cfg.n_layers, cfg.n_layers + 64))
    left = sorted(
        k for k in set(w.tensors) - w.used if not k.startswith(beyond)
    )  # MTP layers not asked for aside
    if left:
        raise ValueError(
            f"the checkpoint has weights minids does not know where to put: {left[:8]}"
        )
    return cfg, model


def load_hf_deepseek_v3(
    path: str | Path, *, dtype: str = "float32", mtp: bool | None = None
) -> tuple[ModelConfig, Transformer]:
    """Read a local `DeepseekV3ForCausalLM` folder; return (minids config, minids model with its weights).

    `mtp` as in `load_hf_deepseek`: the MTP layers are loaded when the folder holds them."""
    return load_hf_deepseek(path, dtype=dtype, family="deepseek_v3", mtp=mtp)


def load_hf_deepseek_v2(
    path: str | Path, *, dtype: str = "float32"
) -> tuple[ModelConfig, Transformer]:
    """Read a local `DeepseekV2ForCausalLM` folder (V2, V2-Lite); return (minids config, minids model)."""
    return load_hf_deepseek(path, dtype=dtype, family="deepseek_v2")

"""ModelConfig and TrainConfig: presets, variants, and validation that names the bad field."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minids.config import DTYPES, PRESETS, ModelConfig, preset
from minids.train import TRAIN_PRESETS, TrainConfig

POSITIVE_INT_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "ffn_dim",
    "max_seq_len",
)
POSITIVE_FLOAT_FIELDS = ("rope_theta", "norm_eps")
DTYPE_FIELDS = ("dtype", "param_dtype")

# Values of the wrong type: what a typo, a YAML file or a careless `float(...)` produces.
not_a_number = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.complex_numbers(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
not_an_int = st.one_of(not_a_number, st.booleans(), st.floats())
bad_positive_int = st.one_of(st.integers(max_value=0), not_an_int)
bad_non_negative_int = st.one_of(st.integers(max_value=-1), not_an_int)
bad_positive_float = st.one_of(
    st.floats(max_value=0.0),
    st.integers(max_value=0),
    st.sampled_from([math.nan, math.inf]),
    st.booleans(),
    not_a_number,
)
bad_dtype = st.one_of(
    st.text(max_size=10).filter(lambda s: s not in DTYPES),
    st.sampled_from(["fp32", "float64", "int8"]),
    st.none(),
    st.integers(),
    st.lists(st.text(max_size=3), max_size=2),
)
bad_bool = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats())

bad_model_field = st.one_of(
    st.tuples(st.sampled_from(POSITIVE_INT_FIELDS), bad_positive_int),
    st.tuples(st.sampled_from(POSITIVE_FLOAT_FIELDS), bad_positive_float),
    st.tuples(st.sampled_from(DTYPE_FIELDS), bad_dtype),
    st.tuples(st.just("tie_embeddings"), bad_bool),
    st.tuples(st.just("seed"), bad_non_negative_int),
)


def _names(field: str) -> str:
    """A regex matching `field` as a whole word (so "dtype" does not match inside "param_dtype")."""
    return rf"(?<![A-Za-z_]){re.escape(field)}(?![A-Za-z_])"


# ------------------------------------------------------------------------------------ ModelConfig


def test_preset_tiny_is_the_documented_baseline():
    cfg = preset("tiny")
    assert cfg == PRESETS["tiny"]
    assert (cfg.mla, cfg.moe, cfg.fp8, cfg.mtp) == (None, None, None, None)
    assert cfg.dtype == "float32" and cfg.param_dtype == "float32"


def test_preset_overrides_make_a_variant_and_leave_the_preset_alone():
    cfg = preset("tiny", n_layers=1, d_model=32)
    assert (cfg.n_layers, cfg.d_model) == (1, 32)
    assert PRESETS["tiny"].n_layers == 3 and PRESETS["tiny"].d_model == 128
    assert cfg.replace(n_layers=5).n_layers == 5 and cfg.n_layers == 1


def test_config_is_frozen():
    cfg = preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 7


def test_unknown_preset_raises_value_error_naming_the_allowed_presets():
    with pytest.raises(ValueError, match="nope") as err:
        preset("nope")
    for name in PRESETS:
        assert repr(name) in str(err.value)


def test_preset_overrides_are_validated():
    with pytest.raises(ValueError, match="n_heads"):
        preset("tiny", n_heads=3)  # 3 query heads cannot share 4 kv heads


@given(bad_model_field)
def test_every_bad_model_field_raises_value_error_naming_it(field_value):
    field, value = field_value
    with pytest.raises(ValueError, match=_names(field)):
        ModelConfig(**{field: value})


@given(st.integers(1, 64), st.integers(1, 64))
def test_n_heads_must_be_a_multiple_of_n_kv_heads(n_heads, n_kv_heads):
    if n_heads % n_kv_heads == 0:
        assert ModelConfig(n_heads=n_heads, n_kv_heads=n_kv_heads).n_heads == n_heads
    else:
        with pytest.raises(ValueError, match="n_kv_heads"):
            ModelConfig(n_heads=n_heads, n_kv_heads=n_kv_heads)


@given(st.integers(1, 257))
def test_head_dim_must_be_even_for_rope(head_dim):
    if head_dim % 2 == 0:
        assert ModelConfig(head_dim=head_dim).head_dim == head_dim
    else:
        with pytest.raises(ValueError, match="head_dim"):
            ModelConfig(head_dim=head_dim)


@given(
    st.fixed_dictionaries(
        {
            "vocab_size": st.integers(1, 512),
            "d_model": st.integers(1, 512),
            "n_layers": st.integers(1, 8),
            "n_kv_heads": st.integers(1, 4),
            "group": st.integers(1, 4),
            "half_head_dim": st.integers(1, 64),
            "rope_theta": st.floats(1e-3, 1e7),
            "norm_eps": st.floats(1e-12, 1.0),
            "dtype": st.sampled_from(sorted(DTYPES)),
            "tie_embeddings": st.booleans(),
            "seed": st.integers(0, 2**31),
        }
    )
)
def test_valid_configs_construct_and_survive_a_json_round_trip(d):
    group, half = d.pop("group"), d.pop("half_head_dim")
    cfg = ModelConfig(n_heads=d["n_kv_heads"] * group, head_dim=2 * half, **d)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.compute_dtype == DTYPES[d["dtype"]]


def test_from_dict_rejects_unknown_fields_by_name():
    d = preset("tiny").to_dict() | {"n_experts": 8}
    with pytest.raises(ValueError, match="n_experts"):
        ModelConfig.from_dict(d)


def test_ints_given_as_floats_are_rejected():
    with pytest.raises(ValueError, match="d_model"):
        ModelConfig(d_model=128.0)


# ------------------------------------------------------------------------------------ TrainConfig

TRAIN_POSITIVE_INT_FIELDS = ("steps", "batch_size")
TRAIN_NON_NEGATIVE_INT_FIELDS = (
    "warmup_steps",
    "eval_every",
    "ckpt_every",
    "seed",
    "eval_examples",
)
not_a_real_number = st.one_of(
    not_a_number, st.booleans(), st.sampled_from([math.nan, math.inf, -math.inf])
)
bad_train_field = st.one_of(
    st.tuples(st.sampled_from(TRAIN_POSITIVE_INT_FIELDS), bad_positive_int),
    st.tuples(st.sampled_from(TRAIN_NON_NEGATIVE_INT_FIELDS), bad_non_negative_int),
    st.tuples(
        st.just("lr"),
        st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), not_a_real_number),
    ),
    st.tuples(
        st.just("min_lr_ratio"),
        st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0001), not_a_real_number),
    ),
    st.tuples(
        st.sampled_from(["weight_decay", "b1", "b2"]),
        st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), not_a_real_number),
    ),
    st.tuples(st.just("grad_clip"), st.one_of(st.floats(max_value=0.0), not_a_real_number)),
)


@given(bad_train_field)
def test_every_bad_train_field_raises_value_error_naming_it(field_value):
    field, value = field_value
    with pytest.raises(ValueError, match=_names(field)):
        TrainConfig(**{field: value})


def test_the_trainable_presets_have_a_training_recipe():
    assert set(TRAIN_PRESETS) == {"tiny", "small", "tiny_v3"}
    for name in TRAIN_PRESETS:
        preset(name)  # each names a preset
    for tcfg in TRAIN_PRESETS.values():
        assert tcfg.warmup_steps < tcfg.steps

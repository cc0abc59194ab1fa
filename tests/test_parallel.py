"""minids.parallel: the 8-device checks (in one subprocess) and the pieces that need no devices.

The expert-parallel layer and the sharded training steps need 8 devices, and XLA's device count is
fixed when JAX starts, so `tests/parallel_checks.py` runs them in a process of its own with
`--xla_force_host_platform_device_count=8`; the fixture starts it once and each test below asserts
one of its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import once_per_run

from minids import parallel as par
from minids.config import MoEConfig, preset
from minids.cost import all_to_all_bytes_per_token, format_all_to_all
from minids.moe import router_scores, select_experts

CHECKS = Path(__file__).with_name("parallel_checks.py")


def run_checks(folder: Path) -> dict:
    done = subprocess.run(
        [sys.executable, str(CHECKS)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def eight_devices(tmp_path_factory) -> dict:
    return once_per_run(tmp_path_factory, "eight-devices", run_checks)


def test_the_checks_ran_on_eight_devices(eight_devices):
    assert eight_devices["devices"] == 8
    assert eight_devices["expert_weights_spec"] == "P('expert',)"


def test_expert_parallel_layer_equals_the_single_device_layer(eight_devices):
    r = eight_devices
    assert r["layer_dropped_frac"] == 0.0
    assert r["layer_value_diff"] < 1e-5
    assert r["layer_input_grad_diff"] < 1e-5 * max(1.0, r["layer_grad_scale"])
    assert r["layer_param_grad_diff"] < 1e-4


def test_per_device_capacity_drops_the_rows_past_it(eight_devices):
    r = eight_devices
    assert r["capacity_kept_matches"]
    assert 0.0 < r["capacity_kept_frac"] < 1.0  # the check did drop something, and not everything


def test_sharded_training_steps_equal_the_single_device_step(eight_devices):
    r = eight_devices
    for mesh in ("data8", "data2_expert4"):
        assert r[f"step_{mesh}_loss_diff"] < 1e-5
        assert r[f"step_{mesh}_grad_norm_rel_diff"] < 1e-5
        # AdamW's first step moves a weight by about lr * sign(gradient): a weight whose gradient
        # is ~0 may move differently by rounding, by at most 2 lr; all others agree far closer.
        assert r[f"step_{mesh}_param_diff"] < r["step_lr"]
    assert r["step_param_change"] > 10 * r["step_data2_expert4_param_diff"]


def test_a_short_run_on_eight_devices_follows_the_single_device_losses(eight_devices):
    single, mesh = eight_devices["run_losses_single"], eight_devices["run_losses_mesh"]
    assert len(single) == len(mesh) >= 5
    assert max(abs(a - b) / a for a, b in zip(single, mesh, strict=True)) < 1e-5
    assert single[-1] < single[0]  # it trained


def test_all_to_all_bytes_in_the_compiled_program_match_the_formula(eight_devices):
    wire = eight_devices["wire"]
    assert wire["dispatch_hlo"] == wire["dispatch_formula"]
    assert wire["combine_hlo"] == wire["combine_formula"]
    assert wire["combine_hlo"] > 0


# ------------------------------------------------------------------------ no devices needed


def test_parse_mesh():
    assert par.parse_mesh("data=2,expert=4") == {"data": 2, "expert": 4}
    assert par.parse_mesh("expert=8") == {"expert": 8}
    for bad in ("data=2,data=2", "model=2", "data=two", ""):
        with pytest.raises(ValueError, match="mesh"):
            par.parse_mesh(bad)


def test_make_mesh_says_how_to_simulate_more_devices():
    n = jax.device_count()
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        par.make_mesh(data=2, expert=n)
    assert par.make_mesh().shape == {"data": n, "expert": 1}


def test_group_limited_routing_bounds_the_devices_a_token_reaches():
    """Groups mapped to devices: a token that keeps M groups reaches at most M of the P devices."""
    E, K, P = 16, 4, 4
    logits = jax.random.normal(jax.random.key(0), (512, E))
    reached = {}
    for groups_per_token in (1, 2, 4):
        cfg = MoEConfig(
            n_routed_experts=E, experts_per_token=K, n_groups=4, groups_per_token=groups_per_token
        )
        indices, _ = select_experts(router_scores(logits, "sigmoid"), jnp.zeros(E), cfg)
        devices = par.devices_reached(indices, E, P)
        assert int(devices.max()) <= par.max_devices_per_token(cfg, P) == min(K, groups_per_token)
        reached[groups_per_token] = float(devices.mean())
    assert reached[1] == 1.0 < reached[2] <= 2.0 < reached[4]  # the bound bites, and is reached


def test_device_slots():
    assert par.device_slots(32, 8, 4, None) == 32  # no limit: every local token fits
    assert par.device_slots(32, 8, 4, 8) == 4  # ceil(8 * 2 / 4)
    assert par.device_slots(4, 8, 4, 100) == 4  # never more than the local tokens


def test_hlo_all_to_all_bytes_reads_the_result_shapes():
    hlo = (
        "  %a = f32[4,16,64]{2,1,0} all-to-all(f32[4,16,64]{2,1,0} %x), replica_groups={{0,1}}\n"
        "  %b = (bf16[1,8]{1,0}, bf16[1,8]{1,0}) all-to-all(bf16[1,8] %y, bf16[1,8] %z)\n"
        "  %c = f32[4,16,64]{2,1,0} add(%a, %a)\n"
    )
    assert par.hlo_all_to_all_bytes(hlo) == [4 * 16 * 64 * 4, 2 * 8 * 2]


def test_all_to_all_formula_at_v3_scale():
    """V3: D = 7168, at most 4 nodes, FP8 dispatch with a float32 scale per 128, BF16 combine."""
    b = all_to_all_bytes_per_token(7168, 4, dispatch_bytes=1, combine_bytes=2, scale_block=128)
    assert b == {"dispatch": 4 * (7168 + 56 * 4), "combine": 4 * 7168 * 2}
    text = format_all_to_all(preset("deepseek_v3"))
    assert "at most 4 nodes" in text and "at most 8 nodes" in text
    assert f"{4 * (7168 + 224) / 1e3:8.2f} KB" in text


def test_cli_train_mesh_says_how_to_get_the_devices(tmp_path, capsys):
    """`python -m minids train --mesh ...` with more devices than the process has: a clear error
    that names the flag which simulates them, before any model is built."""
    from minids.__main__ import main

    n = jax.device_count()
    code = main(
        ["train", "--preset", "tiny_v3", "--mesh", f"data=2,expert={n}", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "xla_force_host_platform_device_count" in capsys.readouterr().err
    assert main(["train", "--mesh", "model=2", "--out", str(tmp_path)]) == 2
    assert "mesh must look like" in capsys.readouterr().err

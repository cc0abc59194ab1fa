"""The 8-device checks of minids.parallel, run in one process on 8 simulated CPU devices.

`XLA_FLAGS=--xla_force_host_platform_device_count=8` must be set before JAX starts, so the test
run cannot share its own process: `tests/test_parallel.py` starts this script once and asserts
each figure it prints (one JSON object on stdout). Run it by hand to see them:

    .venv/bin/python tests/parallel_checks.py

The checks, on `tiny_v3` cut to one block (an MoE one) to keep the compiles short:
- the expert-parallel MoE layer (data=2, expert=4) equals the single-device layer in value and in
  the gradients of its parameters and its input, with nothing dropped;
- with a small per-device capacity it drops rows, and its `kept` agrees with a count by hand;
- one training step on (data=8) and on (data=2, expert=4) equals the single-device step;
- the all-to-all bytes in the compiled program equal `minids.cost.all_to_all_bytes_per_token`;
- a short run on (data=2, expert=4) follows the single-device run's losses step by step.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the device count is read when JAX starts)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")  # as tests/conftest.py

# Check minids' shape annotations at run time, as the pytest plugin does in the test run.
TYPECHECKER = "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"  # pyproject's
with install_import_hook("minids", TYPECHECKER):
    from flax import nnx

    from minids import parallel as par
    from minids.config import TINY_V3, preset
    from minids.model import Transformer
    from minids.moe import MoE, router_scores, select_experts
    from minids.train import TrainConfig, make_optimizer, train_step

RUN_STEPS = 6  # the short training run


def max_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def layer_checks(cfg, mesh, out: dict) -> None:
    layer = MoE(cfg, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (16, 8, cfg.d_model))

    def loss(layer, x):
        y, stats = layer(x)
        return jnp.sum(jnp.sin(y)), (y, stats)

    grad = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (y1, _)), (g1, gx1) = grad(layer, x)
    par.use_expert_parallel(layer, mesh)
    (_, (y2, stats)), (g2, gx2) = grad(layer, x)
    out["layer_value_diff"] = max_diff(y1, y2)
    out["layer_param_grad_diff"] = max_diff(nnx.state(g1, nnx.Param), nnx.state(g2, nnx.Param))
    out["layer_input_grad_diff"] = max_diff(gx1, gx2)
    out["layer_grad_scale"] = float(jnp.max(jnp.abs(gx1)))
    out["layer_dropped_frac"] = float(stats["dropped_frac"])

    # The tokens as the layer routes them, for the capacity and wire checks.
    tokens = x.reshape(-1, cfg.d_model)
    scores = router_scores(tokens @ layer.expert_centroids[...].T, cfg.moe.gate)
    indices, gates = select_experts(scores, layer.aux_free_bias[...], cfg.moe)
    weights = tuple(getattr(layer, n)[...] for n in par.EXPERT_WEIGHTS)

    # One compile serves two checks. Drops: with capacity c per expert a device takes
    # Y = ceil(c X / P) rows from each source, earlier tokens first. Wire: the all-to-alls'
    # bytes in the compiled program against the formula.
    P, E = mesh.shape["expert"], cfg.moe.n_routed_experts
    capacity = 8
    wire, kept = par.all_to_all_bytes(tokens, indices, gates, weights, mesh, capacity)
    slots = par.device_slots(tokens.shape[0] // mesh.size, E, P, capacity)
    expected = []
    for block in np.split(np.asarray(indices), mesh.size):  # each device's own tokens
        device = block // (E // P)
        reaches = np.stack([np.any(device == d, axis=1) for d in range(P)], axis=1)  # (T, P)
        place = np.cumsum(reaches, axis=0) - 1
        expected.append(np.take_along_axis(reaches & (place < slots), device, axis=1))
    out["capacity_slots"] = slots
    out["capacity_kept_frac"] = float(np.mean(kept))
    out["capacity_kept_matches"] = bool(np.array_equal(np.asarray(kept), np.concatenate(expected)))
    out["wire"] = {
        "dispatch_hlo": wire.dispatch_hlo,
        "dispatch_formula": wire.dispatch_formula,
        "combine_hlo": wire.combine_hlo,
        "combine_formula": wire.combine_formula,
        "slots_per_token": wire.slots_per_token,
    }


def step_checks(cfg, out: dict) -> None:
    tcfg = TrainConfig(steps=50, batch_size=16, lr=3e-3, warmup_steps=0)
    rng = np.random.default_rng(0)
    batches = [
        {
            "inputs": rng.integers(3, 60, (16, cfg.max_seq_len)).astype(np.int32),
            "targets": rng.integers(3, 60, (16, cfg.max_seq_len)).astype(np.int32),
            "loss_mask": np.ones((16, cfg.max_seq_len), np.float32),
        }
        for _ in range(RUN_STEPS)
    ]
    runs = {}
    for name, mesh in (
        ("single", None),
        ("data8", par.make_mesh(data=8)),
        ("data2_expert4", par.make_mesh(data=2, expert=4)),
    ):
        model = Transformer(cfg)
        optimizer = make_optimizer(model, tcfg)
        step = train_step if mesh is None else par.make_train_step(model, optimizer, mesh)
        runs[name] = {"model": model, "optimizer": optimizer, "step": step}
    losses = {name: [] for name in runs}
    grad_norms = {}
    for i, batch in enumerate(batches):
        for name, run in runs.items():
            if name == "data8" and i > 0:
                continue  # one step is enough for plain data parallelism
            batch_j = {k: jnp.asarray(v) for k, v in batch.items()}
            metrics = run["step"](run["model"], run["optimizer"], batch_j)
            losses[name].append(float(metrics["loss"]))
            if i == 0:
                grad_norms[name] = float(metrics["grad_norm"])
        if i == 0:
            single = nnx.state(runs["single"]["model"], nnx.Param)
            for name in ("data8", "data2_expert4"):
                out[f"step_{name}_loss_diff"] = abs(losses[name][0] - losses["single"][0])
                out[f"step_{name}_grad_norm_rel_diff"] = (
                    abs(grad_norms[name] - grad_norms["single"]) / grad_norms["single"]
                )
                out[f"step_{name}_param_diff"] = max_diff(
                    single, nnx.state(runs[name]["model"], nnx.Param)
                )
            moved = max_diff(single, nnx.state(Transformer(cfg), nnx.Param))
            out["step_param_change"] = moved  # how far one step moved the weights
            out["step_lr"] = tcfg.lr
            sharding = runs["data2_expert4"]["model"].blocks[0].ffn.routed_gate[...].sharding
            out["expert_weights_spec"] = str(sharding.spec)
    out["run_losses_single"] = losses["single"]
    out["run_losses_mesh"] = losses["data2_expert4"]


def main() -> None:
    started, cpu = time.perf_counter(), time.process_time()
    out = {"devices": jax.device_count()}
    # tiny_v3 cut to one block, an MoE one: each compile is then about half as long.
    cfg = preset("tiny_v3", n_layers=1, moe=TINY_V3.moe.replace(n_dense_layers=0))
    layer_checks(cfg, par.make_mesh(data=2, expert=4), out)
    out["layer_cpu_seconds"] = time.process_time() - cpu
    step_checks(cfg, out)
    out["seconds"] = time.perf_counter() - started
    out["cpu_seconds"] = time.process_time() - cpu
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

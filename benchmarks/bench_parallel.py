"""Expert parallelism on 8 simulated devices, the bytes it sends, and the pipeline simulator's bubbles.

    python benchmarks/bench_parallel.py            # a readable report (about a minute on CPU)
    python benchmarks/bench_parallel.py --quick    # fewer repeats
    python benchmarks/bench_parallel.py --smoke    # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_parallel.py --json     # one JSON object on stdout, nothing else

It starts JAX with `XLA_FLAGS=--xla_force_host_platform_device_count=8` (added to any XLA_FLAGS
already set): eight CPU devices that share this machine's cores. What it measures:

- The forward and backward pass of one `minids.moe.MoE` layer (gradients of a squared error with
  respect to the input and every weight) as a single-device layer and as an expert-parallel
  layer on a (data=2, expert=4) mesh (`minids.parallel.use_expert_parallel`): the same
  parameters and tokens, timed in turn. On simulated devices that share two cores this is the
  *overhead* of dispatch and combine (building the send buffers, the all-to-alls, the local
  experts run on padded slots), not a speed-up: real devices would each run their share at once.
- The bytes each device puts into the all-to-alls per local token, read from the compiled
  program's HLO, against `minids.cost.all_to_all_bytes_per_token`.
- The pipeline simulator (`minids.pipeline`) at PP = 8, 20 micro-batches, F = 1, B = 2, W = 1,
  F&B = 2.5: each schedule's largest per-device bubble beside the table's formula, and its peak
  activations.

JSON keys (`--json`):

    backend, jax_version, cpu_count, devices      where it ran
    tokens, d_model, n_routed_experts             the layer: B * T tokens, D, E
    experts_per_token, mesh                       K, and the mesh's axis sizes
    single_ms, expert_parallel_ms                 median forward + backward (--smoke: forward), ms
    overhead_ratio                                expert_parallel_ms / single_ms
    max_value_diff                                largest |y_single - y_expert_parallel|
    dispatch_bytes_hlo, dispatch_bytes_formula    bytes per local token into dispatch
    combine_bytes_hlo, combine_bytes_formula      bytes per local token out of combine
    slots_per_token                               P * Y / T_local rows per token each way
    pipeline: {name: {...}}                       name: 1f1b, zb1p or dualpipe, each with
        bubble, bubble_formula                    largest device bubble; DualPipe's table
        peak_activations, parameters              micro-batch activations held; stages held
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse  # noqa: E402  (XLA_FLAGS first: JAX reads it when it starts)
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import add_run_flags, interleaved_ms, log, repeats  # noqa: E402
from flax import nnx  # noqa: E402

from minids import parallel as par  # noqa: E402
from minids.config import preset  # noqa: E402
from minids.moe import MoE, router_scores, select_experts  # noqa: E402
from minids.pipeline import SCHEDULES, Times, bubble_formula, simulate  # noqa: E402


def layer_figures(args) -> dict:
    cfg = preset("tiny_v3") if args.smoke else preset("tiny_v3", d_model=128)
    batch, seq = (16, 8) if args.smoke else (64, 24)
    mesh = par.make_mesh(data=2, expert=4)
    single = MoE(cfg, rngs=nnx.Rngs(0))
    sharded = MoE(cfg, rngs=nnx.Rngs(0))  # the same parameters
    par.use_expert_parallel(sharded, mesh)
    x = jax.random.normal(jax.random.key(1), (batch, seq, cfg.d_model))

    def loss(layer, x):
        y, _ = layer(x)
        return jnp.mean(y**2)

    forward = nnx.jit(lambda layer, x: layer(x)[0])
    diff = float(jnp.max(jnp.abs(forward(single, x) - forward(sharded, x))))
    # --smoke times the forward pass it has compiled already; otherwise forward + backward.
    timed = forward if args.smoke else nnx.jit(nnx.grad(loss, argnums=(0, 1)))
    n = repeats(args, 20, 5)
    log(f"timing the layer, {n} repeats")
    ms = interleaved_ms(
        {"single": lambda: timed(single, x), "expert_parallel": lambda: timed(sharded, x)}, n
    )
    tokens = x.reshape(-1, cfg.d_model)
    scores = router_scores(tokens @ single.expert_centroids[...].T, cfg.moe.gate)
    indices, gates = select_experts(scores, single.aux_free_bias[...], cfg.moe)
    weights = tuple(getattr(single, n)[...] for n in par.EXPERT_WEIGHTS)
    wire, _ = par.all_to_all_bytes(tokens, indices, gates, weights, mesh)
    return {
        "tokens": batch * seq,
        "d_model": cfg.d_model,
        "n_routed_experts": cfg.moe.n_routed_experts,
        "experts_per_token": cfg.moe.experts_per_token,
        "mesh": dict(mesh.shape),
        "single_ms": ms["single"],
        "expert_parallel_ms": ms["expert_parallel"],
        "overhead_ratio": ms["expert_parallel"] / ms["single"],
        "max_value_diff": diff,
        "dispatch_bytes_hlo": wire.dispatch_hlo,
        "dispatch_bytes_formula": wire.dispatch_formula,
        "combine_bytes_hlo": wire.combine_hlo,
        "combine_bytes_formula": wire.combine_formula,
        "slots_per_token": wire.slots_per_token,
    }


def pipeline_figures() -> dict:
    times, stages, micro = Times(F=1.0, B=2.0, W=1.0, FB=2.5), 8, 20
    out = {}
    for schedule in SCHEDULES:
        timeline = simulate(schedule, stages, micro, times)
        out[schedule] = {
            "bubble": max(timeline.bubbles()),
            "bubble_formula": bubble_formula(schedule, stages, times),
            "peak_activations": max(timeline.activations()),
            "parameters": max(timeline.parameters),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_flags(parser)
    args = parser.parse_args()
    result = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "devices": jax.device_count(),
        **layer_figures(args),
        "pipeline": pipeline_figures(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['devices']} {result['backend']} devices, mesh {result['mesh']}")
    print(
        f"MoE layer, {result['tokens']} tokens, D {result['d_model']}, "
        f"E {result['n_routed_experts']}, K {result['experts_per_token']}: forward + backward"
    )
    print(f"  single device      {result['single_ms']:8.2f} ms")
    print(
        f"  expert parallel    {result['expert_parallel_ms']:8.2f} ms   "
        f"({result['overhead_ratio']:.2f}x: dispatch overhead on shared cores, not a speed-up)"
    )
    print(f"  largest |difference| of the outputs {result['max_value_diff']:.2e}")
    print(f"all-to-all bytes per local token ({result['slots_per_token']:g} rows each way):")
    for way in ("dispatch", "combine"):
        print(
            f"  {way:8} compiled program {result[f'{way}_bytes_hlo']:8.0f}   "
            f"formula {result[f'{way}_bytes_formula']:8.0f}"
        )
    print("pipeline schedules, PP 8, 20 micro-batches, F 1, B 2, W 1, F&B 2.5:")
    for name, p in result["pipeline"].items():
        print(
            f"  {name:9} bubble {p['bubble']:5.1f} (table {p['bubble_formula']:5.1f})   "
            f"activations {p['peak_activations']:2d}   parameters {p['parameters']}x"
        )


if __name__ == "__main__":
    main()

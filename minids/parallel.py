"""Beyond one device: data parallelism and expert parallelism on JAX's SPMD, in one page.

How it works. JAX runs one program on many devices (SPMD). A `Mesh` lays the devices out on
named axes; here two of them, `data` and `expert`. A `NamedSharding(mesh, PartitionSpec(...))`
says how an array is cut along those axes. `jax.jit` is given the shardings of its inputs and
outputs, and XLA inserts the communication that the program then needs.

- **Data parallelism.** The batch is split over every device (`PartitionSpec(("data", "expert"))`
  on its first dimension) and the parameters are replicated. Each device computes the gradient of
  its own examples; the mean over the whole batch needs a sum across devices, which XLA adds by
  itself (an all-reduce). Nothing in the training step changes: `make_train_step` wraps
  `minids.train.train_step` in a `jax.jit` with shardings.
- **Expert parallelism** (DeepSeek-V3 §3.2.2; DeepEP). The routed experts' weights (E, D, F) are
  cut along E over the `expert` axis: with P devices on it, device p holds experts
  [p E/P, (p+1) E/P). Every device still routes its own tokens. What a token needs then lives
  elsewhere, so `expert_parallel_dispatch`, written out with `jax.shard_map`, moves it:

      1. route:     each token's K experts, so the devices d = expert // (E/P) that hold them
      2. dispatch:  one row per (token, device) pair into a send buffer (P, Y, D): slot y of
                    block d goes to device d. `jax.lax.all_to_all` swaps the blocks: device d
                    receives from every source one block of Y rows
      3. compute:   each received row runs through the experts it chose on this device, weighted
                    by its gates (which travel with it), summed into one row
      4. combine:   the reverse `all_to_all` returns each row to its source, which adds up, for
                    each token, the rows that came back from its devices

  A token that chose two experts on one device crosses the wire once, as DeepEP sends a token
  once per node and fans it out over NVLink there. Each block has Y slots (the per-device
  capacity); rows beyond Y are dropped and counted. By default Y is the number of local tokens,
  so that nothing can be dropped and the layer equals the single-device one.
- **Group-limited routing maps groups to devices.** With `n_groups` a multiple of P, every group's
  experts sit on one device, and a token that keeps `groups_per_token` = M groups reaches at most M
  devices: V3's node-limited routing, M = 4 of 8 nodes (§2.1.2). `max_devices_per_token` is the
  bound; `devices_reached` measures it.

What crosses the wire. A device sends P * Y rows in each all-to-all. In dispatch a row is the
token's D numbers and the E/P gate weights of its experts there; in combine, D numbers. Per local
token (T_local of them) that is `slots_per_token` = P Y / T_local rows each way, and
`minids.cost.all_to_all_bytes_per_token` turns rows into bytes. `all_to_all_bytes` reads the same
figure from the compiled program's HLO. At capacity factor c the slots are c T_local M / P, so a
token's share is c M rows: the M of node-limited routing. (1/P of each buffer is the device's own
block, which stays local.)

Shapes (letters of minids/model.py): T tokens, D model width, E experts, K experts per token,
F expert width. Letters of this module only: P devices on the `expert` axis, Y slots per pair of
devices, X = E/P experts per device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as Spec
from jaxtyping import Array, Bool, Float, Int

from minids.config import FP8Config, MoEConfig, check_int
from minids.cost import all_to_all_bytes_per_token
from minids.model import Transformer
from minids.moe import dispatch_reference
from minids.train import train_step

MESH_AXES = ("data", "expert")
BATCH_AXES = ("data", "expert")  # the batch is split over every device
EXPERT_WEIGHTS = ("routed_gate", "routed_up", "routed_down")  # (E, ...) arrays cut along E

# ---------------------------------------------------------------------------------------- mesh


def parse_mesh(text: str) -> dict[str, int]:
    """'data=2,expert=4' -> {'data': 2, 'expert': 4}; an axis left out is None (filled by make_mesh)."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        match = re.fullmatch(r"(\w+)=(\d+)", part)
        if not match or match[1] not in MESH_AXES or match[1] in sizes:
            raise ValueError(
                f"mesh must look like 'data=2,expert=4' (axes {list(MESH_AXES)}, each at most "
                f"once, sizes positive integers), got {text!r}"
            )
        sizes[match[1]] = int(match[2])
    if not sizes:
        raise ValueError(f"mesh must name at least one axis, like 'data=2,expert=4'; got {text!r}")
    return sizes


def make_mesh(data: int | None = None, expert: int = 1, devices=None) -> Mesh:
    """A (data, expert) mesh over `devices` (default: all). `data=None`: the devices left over."""
    devices = list(jax.devices() if devices is None else devices)
    check_int("expert", expert, 1)
    if data is None:
        data = max(1, len(devices) // expert)
    check_int("data", data, 1)
    if data * expert > len(devices):
        hint = (
            "; on a CPU, simulate more with XLA_FLAGS=--xla_force_host_platform_device_count=8 "
            "set before JAX starts"
            if devices[0].platform == "cpu"
            else ""
        )
        raise ValueError(
            f"the mesh data={data}, expert={expert} needs {data * expert} devices, this process "
            f"has {len(devices)} ({devices[0].platform}){hint}"
        )
    return jax.make_mesh(
        (data, expert),
        MESH_AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices[: data * expert],
    )


# ----------------------------------------------------------------------------------- shardings


def param_spec(path: tuple, value) -> Spec:
    """How one leaf of a model's (or optimizer's) state is cut: the routed experts' weights along
    E over `expert`, everything else whole on every device. Optimizer moments follow their
    parameter, because their paths end in the same names."""
    names = [getattr(p, "key", p) for p in path]
    if any(n in EXPERT_WEIGHTS for n in names) and np.ndim(value) == 3:
        return Spec("expert")
    return Spec()


def state_shardings(state, mesh: Mesh):
    """The NamedSharding of every leaf of an `nnx.State` (parameters, optimizer moments, step)."""
    return jax.tree.map_with_path(lambda p, v: NamedSharding(mesh, param_spec(p, v)), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch split over every device of the mesh."""
    return NamedSharding(mesh, Spec(BATCH_AXES))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """A batch (the same full batch in every process) as arrays split over the mesh by rows.

    Each process fills the devices it can address from its own copy, so this works unchanged
    across hosts after `jax.distributed.initialize()`.
    """
    sharding = batch_sharding(mesh)
    n = mesh.size
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] % n:
            raise ValueError(
                f"the batch's {value.shape[0]} rows must split evenly over the mesh's {n} devices "
                f"(batch_size a multiple of {n})"
            )
        out[name] = jax.make_array_from_callback(value.shape, sharding, lambda i, v=value: v[i])
    return out


# ------------------------------------------------------------------------- expert parallelism


def max_devices_per_token(cfg: MoEConfig, n_devices: int) -> int:
    """The most devices one token's rows can reach when E experts are split over `n_devices`.

    Groups whole on a device (n_groups a multiple of P): M = groups_per_token devices at most. A
    group spread over P/n_groups devices: M P / n_groups. Otherwise only K and P bound it.
    """
    K, G, M, P = cfg.experts_per_token, cfg.n_groups, cfg.groups_per_token, n_devices
    if G > 1 and G % P == 0:
        return min(K, M)
    if G > 1 and P % G == 0:
        return min(K, M * P // G, P)
    return min(K, P)


def devices_reached(indices: Int[Array, "T K"], n_experts: int, n_devices: int) -> Int[Array, " T"]:
    """How many different devices each token's K experts live on (experts split evenly, in order)."""
    device = indices // (n_experts // n_devices)  # (T, K)
    reaches = jnp.any(jax.nn.one_hot(device, n_devices, dtype=bool), axis=1)  # (T, P)
    return jnp.sum(reaches, axis=-1)


def device_slots(n_local_tokens: int, n_experts: int, n_devices: int, capacity) -> int:
    """Y, rows a device accepts from each source device. `capacity` is the single-device layer's
    per-expert limit for the whole batch (`minids.moe.expert_capacity`), or None for no limit.

    A device holds X = E/P experts, so it takes X * capacity assignments from all P sources:
    X * capacity / P from each, rounded up, and never more than there are local tokens (each
    token sends a device at most one row). None: every local token, so that nothing is dropped.
    """
    if capacity is None:
        return n_local_tokens
    share = math.ceil(capacity * (n_experts // n_devices) / n_devices)
    return max(1, min(n_local_tokens, share))


def dispatch_slots(
    indices: Int[Array, "T K"], n_experts: int, n_devices: int, slots: int
) -> Int[Array, "T P"]:
    """Where each token's row goes in each device's block of the send buffer: slot[t, d] is the
    row's place in block d (earlier tokens first), or `slots` when token t sends device d nothing
    (none of its experts is there) or its row came past the block's `slots` places (dropped)."""
    device = indices // (n_experts // n_devices)  # (T, K)
    reaches = jnp.any(jax.nn.one_hot(device, n_devices, dtype=bool), axis=1)  # (T, P)
    place = jnp.cumsum(reaches, axis=0) - 1  # rows before it in the same block
    return jnp.where(reaches & (place < slots), place, slots).astype(jnp.int32)


def _expert_parallel_local(x, indices, gates, w_gate, w_up, w_down, *, axis, slots, fp8):
    """What one device runs inside `shard_map`: its own tokens, its own X experts."""
    T, D = x.shape
    X = w_gate.shape[0]
    P = jax.lax.axis_size(axis)
    # 1. route: the device holding each chosen expert, and the expert's place on that device
    device, local = indices // X, indices % X  # (T, K) each
    to_device = jax.nn.one_hot(device, P, dtype=gates.dtype)  # (T, K, P)
    # The gate weight each row carries for each expert of its device (0 for the others).
    weights = jnp.einsum("TKP,TKX->TPX", to_device * gates[..., None], jax.nn.one_hot(local, X))
    # 2. dispatch: one row per (token, device) pair, in slot `slot` of block d; a row past the
    # Y slots is dropped. Slot Y is outside the buffer, and `mode="drop"` writes nothing there.
    slot = dispatch_slots(indices, P * X, P, slots)  # (T, P)
    kept_row = slot < slots
    block = jnp.broadcast_to(jnp.arange(P)[None, :], (T, P))
    send_x = (
        jnp.zeros((P, slots, D), x.dtype)
        .at[block, slot]
        .set(jnp.broadcast_to(x[:, None, :], (T, P, D)), mode="drop")
    )
    send_w = jnp.zeros((P, slots, X), gates.dtype).at[block, slot].set(weights, mode="drop")
    recv_x = jax.lax.all_to_all(send_x, axis, 0, 0, tiled=True)  # block q now: rows from device q
    recv_w = jax.lax.all_to_all(send_w, axis, 0, 0, tiled=True)
    # 3. compute: every received row through this device's X experts, weighted by its gates
    # (an empty slot has zero weights and gives zero), with the plain single-device dispatch.
    rows = recv_x.reshape(P * slots, D)
    every_expert = jnp.broadcast_to(jnp.arange(X)[None, :], (P * slots, X))
    y_rows, _ = dispatch_reference(
        rows, every_expert, recv_w.reshape(P * slots, X), w_gate, w_up, w_down, fp8=fp8
    )
    # 4. combine: rows go home, and each token adds up what its devices sent back.
    back = jax.lax.all_to_all(y_rows.reshape(P, slots, D), axis, 0, 0, tiled=True)
    y = jnp.sum(back.at[block, slot].get(mode="fill", fill_value=0), axis=1)  # (T, D)
    kept = jnp.take_along_axis(kept_row, device, axis=1)  # (T, K): an assignment lives with its row
    return y.astype(x.dtype), kept


def expert_parallel_dispatch(
    x: Float[Array, "T D"],
    indices: Int[Array, "T K"],
    gates: Float[Array, "T K"],
    w_gate: Float[Array, "E D F"],
    w_up: Float[Array, "E D F"],
    w_down: Float[Array, "E F D"],
    capacity: int | None = None,
    fp8: FP8Config | None = None,
    *,
    mesh: Mesh,
) -> tuple[Float[Array, "T D"], Bool[Array, "T K"]]:
    """`minids.moe.dispatch_reference`'s (y, kept), with the experts spread over the mesh's
    `expert` axis and the tokens over all its devices, moved by all-to-all (module docstring).

    `capacity` is the single-device per-expert limit (None: no drops); `device_slots` turns it
    into the per-device one. Tokens are split over every device; a T that does not divide evenly
    is padded with tokens whose gates are 0 (they take slots, and are cut off after).
    """
    P, E, T = mesh.shape["expert"], w_gate.shape[0], x.shape[0]
    if E % P:
        raise ValueError(
            f"expert parallelism over {P} devices needs n_routed_experts ({E}) divisible by {P}"
        )
    pad = -T % mesh.size  # tokens split evenly over the devices: pad with tokens of gate 0
    if pad:
        y, kept = expert_parallel_dispatch(
            jnp.pad(x, ((0, pad), (0, 0))),
            jnp.pad(indices, ((0, pad), (0, 0))),
            jnp.pad(gates, ((0, pad), (0, 0))),
            w_gate,
            w_up,
            w_down,
            capacity,
            fp8,
            mesh=mesh,
        )
        return y[:T], kept[:T]
    slots = device_slots(T // mesh.size, E, P, capacity)
    local = functools.partial(_expert_parallel_local, axis="expert", slots=slots, fp8=fp8)
    tokens, experts = Spec(BATCH_AXES), Spec("expert")
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(tokens, tokens, tokens, experts, experts, experts),
        out_specs=(tokens, tokens),
    )(x, indices, gates, w_gate, w_up, w_down)


def use_expert_parallel(model: nnx.Module, mesh: Mesh | None) -> None:
    """Make every MoE layer of `model` dispatch across the mesh's `expert` axis (None: undo).

    The layers keep their parameters; only the way tokens reach the experts changes (the MoE
    layer's `expert_parallel` hook, read in `MoE.__call__`).
    """
    moe_layers = model.moe_layers() if isinstance(model, Transformer) else [model]
    use = mesh is not None and mesh.shape.get("expert", 1) > 1
    for layer in moe_layers:
        if use and layer.moe_cfg.n_routed_experts % mesh.shape["expert"]:
            raise ValueError(
                f"n_routed_experts ({layer.moe_cfg.n_routed_experts}) must be divisible by the "
                f"mesh's expert axis ({mesh.shape['expert']})"
            )
        layer.expert_parallel = (
            functools.partial(expert_parallel_dispatch, mesh=mesh) if use else None
        )


# ----------------------------------------------------------------------------- training step


def shard_model(model: nnx.Module, optimizer: nnx.Optimizer | None, mesh: Mesh) -> None:
    """Place the model's (and optimizer's) state on the mesh and turn on expert parallelism."""
    for obj in (model, optimizer):
        if obj is not None:
            state = nnx.state(obj)
            nnx.update(obj, jax.device_put(state, state_shardings(state, mesh)))
    use_expert_parallel(model, mesh)


def make_train_step(model: Transformer, optimizer: nnx.Optimizer, mesh: Mesh) -> Callable:
    """`step(model, optimizer, batch) -> metrics`: `minids.train.train_step` run on the mesh.

    The model and optimizer are placed on the mesh first. The step's shardings are written out:
    state in and out as `state_shardings`, the batch split by rows, the metrics whole. It fits
    `minids.train.fit(..., step_fn=step)`.
    """
    shard_model(model, optimizer, mesh)
    graphdef, state = nnx.split((model, optimizer))
    shardings = state_shardings(state, mesh)
    whole = NamedSharding(mesh, Spec())

    @functools.partial(
        jax.jit,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, whole),
        donate_argnums=0,
    )
    def sharded_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = train_step(model, optimizer, batch)
        return nnx.state((model, optimizer)), metrics

    def step(model, optimizer, batch):
        new_state, metrics = sharded_step(nnx.state((model, optimizer)), shard_batch(batch, mesh))
        nnx.update((model, optimizer), new_state)
        return metrics

    return step


def mesh_step(mesh: Mesh) -> Callable:
    """A `step_fn` for `minids.train.fit`: its first call places the model and the optimizer that
    `fit` made (or restored) on the mesh and builds `make_train_step`. A later model of the same
    structure (another seed) is placed on the mesh and reuses the compiled step."""
    built: dict = {}

    def step(model, optimizer, batch):
        if built.get("model") is not model or built.get("optimizer") is not optimizer:
            structure = nnx.graphdef((model, optimizer))
            if built and structure == built["structure"]:
                shard_model(model, optimizer, mesh)  # the compiled step fits this pair as well
            else:
                built["structure"] = structure
                built["step"] = make_train_step(model, optimizer, mesh)
            built["model"], built["optimizer"] = model, optimizer
        return built["step"](model, optimizer, batch)

    return step


# --------------------------------------------------------------------- what crosses the wire


@dataclasses.dataclass(frozen=True)
class WireBytes:
    """Bytes one device puts into all-to-alls, per local token: read from HLO, and by formula."""

    dispatch_hlo: float
    combine_hlo: float
    dispatch_formula: float
    combine_formula: float
    slots_per_token: float


def hlo_all_to_all_bytes(hlo_text: str) -> list[int]:
    """The byte size of every all-to-all's result in a compiled (per-device) HLO module, in order.

    An all-to-all returns as much as it sends, so this is also what each device sends."""
    sizes = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "f8e4m3fn": 1}
    found = []
    for line in hlo_text.splitlines():
        if " all-to-all(" not in line:
            continue
        result = line.split("=", 1)[1].split("all-to-all(", 1)[0]
        found.append(
            sum(
                sizes[dtype] * math.prod(int(n) for n in dims.split(",") if n)
                for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result)
            )
        )
    return found


def all_to_all_bytes(
    x: Float[Array, "T D"],
    indices: Int[Array, "T K"],
    gates: Float[Array, "T K"],
    weights: Sequence[Array],
    mesh: Mesh,
    capacity: int | None = None,
) -> tuple[WireBytes, Bool[Array, "T K"]]:
    """Compile one expert-parallel dispatch, read its all-to-alls, and run it once: (bytes, kept).

    `weights` is (w_gate, w_up, w_down). The forward pass has three all-to-alls: the tokens and
    their gate weights out (dispatch), the results back (combine). Checked against
    `minids.cost.all_to_all_bytes_per_token` with P * Y / T_local rows per token.
    """
    fn = jax.jit(functools.partial(expert_parallel_dispatch, capacity=capacity, mesh=mesh))
    compiled = fn.lower(x, indices, gates, *weights).compile()
    found = hlo_all_to_all_bytes(compiled.as_text())
    if len(found) != 3:
        raise RuntimeError(f"expected 3 all-to-alls (x, gates, results), found {len(found)}")
    P, E = mesh.shape["expert"], weights[0].shape[0]
    T_local = x.shape[0] // mesh.size
    per_token = P * device_slots(T_local, E, P, capacity) / T_local
    formula = all_to_all_bytes_per_token(
        x.shape[1],
        per_token,
        dispatch_bytes=x.dtype.itemsize,
        combine_bytes=x.dtype.itemsize,
        metadata_bytes=(E // P) * gates.dtype.itemsize,
    )
    combine = found.pop(-1)  # the results come back last
    wire = WireBytes(
        dispatch_hlo=sum(found) / T_local,
        combine_hlo=combine / T_local,
        dispatch_formula=formula["dispatch"],
        combine_formula=formula["combine"],
        slots_per_token=per_token,
    )
    return wire, compiled(x, indices, gates, *weights)[1]

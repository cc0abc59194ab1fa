"""DeepSeekMoE: shared experts, many small routed experts, and keeping them all busy.

How it works. A mixture-of-experts (MoE) layer replaces a block's one feed-forward network (FFN)
with many small FFNs, the experts, and runs each token through only a few of them. DeepSeekMoE
(Dai et al. 2024, arXiv 2401.06066) makes two choices. The routed experts are fine-grained: many
narrow FFNs, so that a token combines more specialists for the same compute. And a few shared
experts see every token, so that common knowledge is learned once rather than in every expert.
DeepSeek-V3 (arXiv 2412.19437, §2.1.2, eqs. 12-16) writes the layer for a token u_t as

    h'_t = u_t + sum_i FFN_shared_i(u_t) + sum_i g_it FFN_routed_i(u_t)                     (12)
    s_it = sigmoid(u_t . e_i)            affinity of token t for expert i (e_i: its centroid) (15)
    chosen: the K experts with the largest s_it + b_i    (b_i: load-balancing bias, eq. 16)
    g_it = s_it / sum_{j chosen} s_jt    for a chosen expert, 0 otherwise              (13, 14)

The block adds u_t; this module returns the two sums, with g scaled by `route_scale` as V3's
released code does. DeepSeek-V2 (arXiv 2405.04434, §2.2) used softmax affinities and kept the top-K
of them as they are, without renormalising; `MoEConfig.gate` picks either router.

Group-limited routing. The experts are split into `n_groups` equal groups (in V2 the devices, in
V3 the nodes holding them). A token ranks the groups, keeps the best `groups_per_token`, and chooses
its K experts inside those only, which bounds how many devices (V2 §2.2.1) or nodes (V3 §2.1.2) its
activations travel to. V2 ranks a group by the highest affinity in it; V3, with the balancing bias,
by the sum of the two highest biased affinities in it (DeepSeek's released `Gate` does the same:
the maximum without a bias, the top-2 sum with one). `select_experts` follows the bias: top-2 sum
with `aux_free`, the maximum otherwise.

Balance. Left alone, a router sends most tokens to a few experts that then improve fastest: a
collapse. `MoEConfig.balancing` picks a remedy:

- `aux_loss`: alpha * sum_i f_i P_i over the whole batch, with f_i = E/(K T) * (tokens sent to
  expert i) and P_i the mean affinity for i: the GShard / Switch Transformer style of loss. At
  perfect balance with a uniform router it equals alpha; its gradient lowers the affinity of
  experts that are both busy and preferred. (V2's expert-level loss, eqs. 23-25, is this sum
  taken per sequence, which `seq_aux_loss` computes; V2 also added device-level and
  communication-level balance losses over its devices, eqs. 26-31, which need expert
  parallelism and are not here.)
- `seq_aux_loss`, V3 eqs. 17-20: the same loss per sequence, affinities normalised over all experts.
- `aux_free`, V3's auxiliary-loss-free balancing: no loss. The bias b_i above is used to choose
  experts and never in g. After each training step b_i -= gamma if expert i received more than its
  share of that step's tokens and += gamma if less, outside the gradient. It steers traffic without
  distorting what the chosen experts contribute. V3 combines it with a tiny `seq_aux_loss`.

The bias is state, not a parameter (`AuxFreeBias`): checkpoints save it, the optimizer never sees it.

Capacity (optional). With a capacity factor c each expert takes at most ceil(c T K / E) of the
batch's T tokens, earlier tokens first, and drops the rest of its assignments: they contribute
nothing, and the token keeps its shared experts and its residual. V3 drops no tokens; V2 dropped at
c = 1.0 in training, the lowest-affinity assignments of each device first. minids drops the latest
tokens first, as GShard and Switch do, which a hand-worked example can follow.

Dispatch. `dispatch_reference` runs every expert on every token and keeps the chosen results (E/K
times the work, plainly correct): the plain form. `MoE` runs the kernel chosen in one line of
`MoE.__call__` instead, `minids.kernels.moe_dispatch.dispatch`, which runs each expert on its own
tokens only (blocks of rows on a CPU, `jax.lax.ragged_dot` on a GPU/TPU) and gives the same outputs,
drops and gradients (tests/test_moe.py). With `cfg.fp8` set, both run the routed experts' GEMMs on
simulated FP8 values (V3 §3.3); the router stays float32.

Measuring balance. Each layer reports MaxVio = max_i load_i / mean load - 1 (0 when perfectly
balanced), the measure of Wang et al. 2024 (arXiv 2408.15664), the aux-loss-free balancing paper
V3 cites; their MaxVio comparisons of aux-free against aux-loss balancing are theirs. V3 itself
(§4.5) compares the two by model quality, not by MaxVio.

Shapes (letters of minids/model.py): T counts all tokens of the batch (B*T flattened), D model width,
E routed experts, K experts per token, F expert width.
"""

from __future__ import annotations

import math
from typing import no_type_check

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.config import MOE_GATES, FP8Config, ModelConfig, MoEConfig, check_choice
from minids.fp8 import fp8_expert_hooks, fp8_expert_inputs
from minids.kernels import moe_dispatch as kernel_moe
from minids.layers import SwiGLU


def expert_capacity(n_tokens: int, cfg: MoEConfig) -> int | None:
    """Most assignments an expert keeps from a batch of n_tokens: ceil(c T K / E); None = no limit."""
    if cfg.capacity_factor is None:
        return None
    return math.ceil(cfg.capacity_factor * n_tokens * cfg.experts_per_token / cfg.n_routed_experts)


# ------------------------------------------------------------------------------------- router


def router_scores(logits: Float[Array, "T E"], gate: str) -> Float[Array, "T E"]:
    """Affinities s from the router logits u . e_i, in float32: sigmoid (V3) or softmax (V2)."""
    check_choice("gate", gate, MOE_GATES)
    logits = logits.astype(jnp.float32)
    return jax.nn.sigmoid(logits) if gate == "sigmoid" else jax.nn.softmax(logits, axis=-1)


def select_experts(
    scores: Float[Array, "T E"], bias: Float[Array, " E"], cfg: MoEConfig
) -> tuple[Int[Array, "T K"], Float[Array, "T K"]]:
    """Each token's K experts, chosen on s + b within its best groups, and their gates from s alone."""
    T, E = scores.shape
    if E != cfg.n_routed_experts or bias.shape != (E,):
        raise ValueError(
            f"scores (T, E) and bias (E,) need E = n_routed_experts = "
            f"{cfg.n_routed_experts}, got {scores.shape} and {bias.shape}"
        )
    biased = scores + bias[None, :]  # eq. 16: the bias only decides who is chosen
    if cfg.n_groups > 1:
        per_group = E // cfg.n_groups
        grouped = biased.reshape(T, cfg.n_groups, per_group)
        if cfg.uses_bias:  # V3: a group's score is the sum of its two highest biased affinities
            group_score = jnp.sum(jax.lax.top_k(grouped, min(2, per_group))[0], axis=-1)  # (T, G)
        else:  # V2 (no bias): a group's score is its highest affinity
            group_score = jnp.max(grouped, axis=-1)  # (T, G)
        _, best = jax.lax.top_k(group_score, cfg.groups_per_token)
        allowed = jnp.any(jax.nn.one_hot(best, cfg.n_groups, dtype=bool), axis=1)  # (T, G)
        allowed = jnp.repeat(allowed, per_group, axis=1)  # (T, E)
        biased = jnp.where(allowed, biased, -jnp.inf)
    _, indices = jax.lax.top_k(biased, cfg.experts_per_token)
    chosen = jnp.take_along_axis(scores, indices, axis=-1)  # the unbiased s of the chosen experts
    if cfg.renormalizes:  # V3 eq. 13: normalise over the chosen K (V2 keeps softmax's values)
        chosen = chosen / jnp.sum(chosen, axis=-1, keepdims=True)
    return indices, chosen * cfg.route_scale


def sigmoid_topk_router(
    logits: Float[Array, "T E"], bias: Float[Array, " E"], k: int, route_scale: float = 1.0
) -> tuple[Int[Array, "T K"], Float[Array, "T K"]]:
    """V3's router without groups (exercise 01): top-k of sigmoid(logits) + bias, gates s / sum s."""
    cfg = MoEConfig(
        n_routed_experts=logits.shape[-1],
        experts_per_token=k,
        gate="sigmoid",
        route_scale=route_scale,
    )
    return select_experts(router_scores(logits, "sigmoid"), bias, cfg)


# ---------------------------------------------------------------------------------- balancing


def expert_load(indices: Int[Array, "T K"], n_experts: int) -> Float[Array, " E"]:
    """Fraction of the T*K routed assignments that went to each expert (sums to 1)."""
    counts = jnp.sum(jax.nn.one_hot(indices, n_experts, dtype=jnp.float32), axis=(0, 1))
    return counts / indices.size


def _balance_loss(scores: Float[Array, "T E"], indices: Int[Array, "T K"]) -> Float[Array, ""]:
    E = scores.shape[-1]
    f = E * expert_load(indices, E)  # E/(K T) * count: 1 for every expert at perfect balance
    P = jnp.mean(scores / jnp.sum(scores, axis=-1, keepdims=True), axis=0)  # eq. 19-20
    return jnp.sum(f * P)


def expert_aux_loss(
    scores: Float[Array, "T E"], indices: Int[Array, "T K"], alpha: float
) -> Float[Array, ""]:
    """A balance loss over the whole batch (GShard / Switch style): alpha * sum_i f_i P_i."""
    return alpha * _balance_loss(scores, indices)


def sequence_aux_loss(
    scores: Float[Array, "B T E"], indices: Int[Array, "B T K"], alpha: float
) -> Float[Array, ""]:
    """V3's sequence-wise balance loss (eqs. 17-20): alpha * sum_i f_i P_i per sequence, averaged."""
    return alpha * jnp.mean(jax.vmap(_balance_loss)(scores, indices))


def aux_free_bias_update(
    bias: Float[Array, " E"], load: Float[Array, " E"], speed: float = 1e-3
) -> Float[Array, " E"]:
    """V3's bias rule: b_i - gamma where expert i is above the mean load, + gamma where below."""
    step = speed * jnp.sign(jnp.mean(load) - load)  # 0 for an expert exactly at the mean
    return jax.lax.stop_gradient(bias + step.astype(bias.dtype))


class AuxFreeBias(nnx.Variable):
    """The aux-free balancing bias b: model state that checkpoints keep, but not an `nnx.Param`."""


# ----------------------------------------------------------------------------------- dispatch


def queue_places(expert: Int[Array, " P"], n_experts: int) -> Int[Array, " P"]:
    """Each (token, expert) pair's place in its expert's queue: how many earlier pairs (in token
    order) chose the same expert. A running count per expert, no sort."""
    choice = jax.nn.one_hot(expert, n_experts, dtype=jnp.int32)  # (P, E)
    return jnp.sum((jnp.cumsum(choice, axis=0) - 1) * choice, axis=1)


def check_dispatch_shapes(x, indices, gates, w_gate, w_up, w_down) -> None:
    (T, D), (E, _, F) = x.shape, w_gate.shape
    if (
        indices.shape != gates.shape
        or indices.shape[0] != T
        or w_up.shape != (E, D, F)
        or w_gate.shape != (E, D, F)
        or w_down.shape != (E, F, D)
    ):
        raise ValueError(
            "dispatch needs x (T, D), indices and gates (T, K), w_gate and w_up (E, D, F), w_down "
            f"(E, F, D); got {x.shape}, {indices.shape}, {gates.shape}, {w_gate.shape}, "
            f"{w_up.shape}, {w_down.shape}"
        )


def dispatch_reference(
    x: Float[Array, "T D"],
    indices: Int[Array, "T K"],
    gates: Float[Array, "T K"],
    w_gate: Float[Array, "E D F"],
    w_up: Float[Array, "E D F"],
    w_down: Float[Array, "E F D"],
    capacity: int | Int[Array, ""] | None = None,
    fp8: FP8Config | None = None,
) -> tuple[Float[Array, "T D"], Bool[Array, "T K"]]:
    """Every expert on every token, then a gate-weighted sum of the chosen: (y, kept assignments)."""
    check_dispatch_shapes(x, indices, gates, w_gate, w_up, w_down)
    T, K = indices.shape
    E = w_gate.shape[0]
    fp8_in, fp8_out = fp8_expert_hooks(fp8)
    x, w_gate, w_up, w_down = fp8_expert_inputs(x, w_gate, w_up, w_down, fp8)
    gate = fp8_out(jnp.einsum("TD,EDF->ETF", x, w_gate))
    hidden = fp8_in(jax.nn.silu(gate) * fp8_out(jnp.einsum("TD,EDF->ETF", x, w_up)))
    out = fp8_out(jnp.einsum("ETF,EFD->ETD", hidden, w_down))  # expert e's output for every token
    choice = jax.nn.one_hot(indices, E, dtype=jnp.int32)  # (T, K, E)
    kept = jnp.ones((T, K), dtype=bool)
    if (
        capacity is not None
    ):  # queue position: earlier (token, slot) pairs that chose the same expert
        position = queue_places(indices.reshape(T * K), E).reshape(T, K)
        kept = position < capacity
    combine = jnp.einsum("TKE,TK->TE", choice.astype(jnp.float32), jnp.where(kept, gates, 0.0))
    y = jnp.einsum("TE,ETD->TD", combine, out.astype(jnp.float32))
    return y.astype(x.dtype), kept


# -------------------------------------------------------------------------------------- layer


class MoE(nnx.Module):
    """Shared experts + routed experts behind a router: `y, stats = moe(x)` for x (B, T, D)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg.moe, MoEConfig):
            raise TypeError(f"cfg.moe must be a MoEConfig, got {type(cfg.moe).__name__}")
        moe = self.moe_cfg = cfg.moe
        self.compute_dtype = cfg.compute_dtype
        E, D, F = moe.n_routed_experts, cfg.d_model, moe.expert_ffn_dim
        self.fp8 = cfg.fp8  # routed experts in simulated FP8; the router stays float32
        # A dispatch across devices, set by `minids.parallel.use_expert_parallel`; None: this one.
        self.expert_parallel = None

        def init(
            shape, scale=1.0, dtype=cfg.weight_dtype
        ):  # like layers.dense: N(0, scale / fan_in)
            fn = nnx.initializers.variance_scaling(
                scale, "fan_in", "normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
            )
            return nnx.Param(fn(rngs.params(), shape, dtype))

        # Rows of the router weight are the expert centroids e_i of eq. 15. Gating stays in float32
        # whatever the compute dtype, as V3 keeps it (§3.3).
        self.expert_centroids = nnx.Param(
            nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=-2)(
                rngs.params(), (E, D), jnp.float32
            )
        )
        self.aux_free_bias = AuxFreeBias(jnp.zeros((E,), jnp.float32))
        self.routed_gate = init((E, D, F))
        self.routed_up = init((E, D, F))
        self.routed_down = init((E, F, D), scale=1.0 / (2 * cfg.n_layers))
        # N_s shared experts summed = one SwiGLU N_s times as wide (their hidden units concatenated).
        self.shared_experts = (
            SwiGLU(cfg, ffn_dim=moe.n_shared_experts * F, rngs=rngs)
            if moe.n_shared_experts
            else None
        )

    @no_type_check  # checks x itself, with a ValueError that says what shape it wants
    def __call__(self, x: Float[Array, "B T D"]) -> tuple[Float[Array, "B T D"], dict[str, Array]]:
        moe, E = self.moe_cfg, self.moe_cfg.n_routed_experts
        if x.ndim != 3 or x.shape[-1] != self.expert_centroids.shape[1]:
            raise ValueError(
                f"x must be (B, T, D) with D = {self.expert_centroids.shape[1]}, "
                f"got shape {x.shape}"
            )
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # one row per token
        logits = jnp.einsum("TD,ED->TE", tokens.astype(jnp.float32), self.expert_centroids[...])
        scores = router_scores(logits, moe.gate)
        bias = self.aux_free_bias[...] if moe.uses_bias else jnp.zeros((E,), jnp.float32)
        indices, gates = select_experts(scores, bias, moe)
        # Kernel choice: "fast" runs each expert on its own tokens only, K/E of the reference's
        # expert FLOPs (blocks on a CPU, `jax.lax.ragged_dot` on a GPU/TPU), equal to
        # `dispatch_reference` in value, drops and gradient (tests/test_kernels.py).
        dispatch = kernel_moe.dispatch if moe.dispatch == "fast" else dispatch_reference
        if self.expert_parallel is not None:  # experts spread over devices: all-to-all dispatch
            dispatch = self.expert_parallel
        cdt = self.compute_dtype
        routed, kept = dispatch(
            tokens.astype(cdt),
            indices,
            gates,
            self.routed_gate[...].astype(cdt),
            self.routed_up[...].astype(cdt),
            self.routed_down[...].astype(cdt),
            capacity=expert_capacity(B * T, moe),
            fp8=self.fp8,
        )
        y = routed.reshape(B, T, D)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x).astype(y.dtype)
        if moe.balancing == "aux_loss":
            aux_loss = expert_aux_loss(scores, indices, moe.aux_loss_alpha)
        elif moe.balancing.endswith("seq_aux_loss"):
            K = moe.experts_per_token
            aux_loss = sequence_aux_loss(
                scores.reshape(B, T, E), indices.reshape(B, T, K), moe.aux_loss_alpha
            )
        else:
            aux_loss = jnp.zeros((), jnp.float32)
        load = expert_load(indices, E)
        stats = {
            "load": load,  # (E,), fraction of the routed assignments, before any dropping
            "max_vio": jnp.max(load) * E
            - 1.0,  # max load / mean load - 1: MaxVio (Wang et al. 2024)
            "dropped_frac": 1.0 - jnp.mean(kept.astype(jnp.float32)),
            "aux_loss": aux_loss,  # already multiplied by alpha; 0 without a loss term
        }
        return y, stats

    def update_bias(self, load: Float[Array, " E"]) -> None:
        """After an optimizer step: move the aux-free bias toward balance (no-op without aux_free)."""
        if self.moe_cfg.uses_bias:
            self.aux_free_bias[...] = aux_free_bias_update(
                self.aux_free_bias[...], load, self.moe_cfg.bias_update_speed
            )

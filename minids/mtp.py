"""Multi-token prediction (MTP): extra modules that learn to predict tokens further ahead.

DeepSeek-V3 §2.2 (eqs. 21-25). A language model's loss asks each position for one token, the next.
MTP adds D small modules; module k asks position i for token i+k+1 as well, and keeps the causal
chain intact by building on the representation of module k-1 at the same position:

    h'^k_i   = M_k [RMSNorm(h^{k-1}_i) ; RMSNorm(Emb(t_{i+k}))]       M_k: 2D -> D        (eq. 21)
    h^k_1:T-k = TRM_k(h'^k_1:T-k)                                      one transformer block (eq. 22)
    P^k_{i+k+1} = OutHead(h^k_i)                                       the SHARED head     (eq. 23)

h^0 is the main model's representation (here: its final, normalised hidden state, the vector the
output head reads, as inference engines that serve V3's MTP weights feed it). The embedding Emb and
the output head are the main model's own, shared; each module owns two RMSNorms, M_k, its block and
the RMSNorm in front of the shared head (`shared_head.norm` in V3's weights). Module k's loss is the
cross-entropy of token i+k+1 at every position that has one (eq. 24), and the training loss adds

    L_MTP = (lambda / D) * sum_k L^k_MTP                                                   (eq. 25)

to the main loss, with lambda 0.3 for V3's first 10T tokens and 0.1 for the last 4.8T
(`MTPConfig.weight_at`).

Why it helps. Each position now receives D + 1 targets instead of one: a denser training signal,
and the main model is pushed to keep in h^0 what the next-but-one token needs (V3 §2.2 calls it
pre-planning). At inference the modules can simply be dropped (`drop_mtp`): the main model does not
depend on them. Or they can be kept as a free draft model: module 1 guesses token i+2 from h^0_i and
the token i+1 that the main model has just chosen, and the next forward pass of the main model checks
the guess; V3 reports 85-90% of the guesses accepted and 1.8x the tokens per second
(`minids.generate.generate_speculative`).

Layout in code. `M_k` is `eh_proj`, and it reads the embedding first, [RMSNorm(Emb) ; RMSNorm(h)],
the column order of V3's released `eh_proj` weights (the paper writes the two halves the other way
round; swapping them is a permutation of M_k's columns). The shift is done by padding: module k
reads `tokens[:, i + k]` at position i, and the last k positions, which have no such token, are
masked out of its loss, so every depth keeps the sequence length T and one compiled shape.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.config import ModelConfig
from minids.layers import RMSNorm, dense


def shift_left(x: Array, k: int, fill: float | int = 0) -> Array:
    """x[:, i + k] at position i, `fill` in the last k positions (which have no such entry)."""
    if k == 0:
        return x
    pad = jnp.full((x.shape[0], k, *x.shape[2:]), fill, x.dtype)
    return jnp.concatenate([x[:, k:], pad], axis=1)


def mtp_targets(
    targets: Int[Array, "B T"], loss_mask: Float[Array, "B T"], k: int
) -> tuple[Int[Array, "B T"], Float[Array, "B T"]]:
    """Module k's targets and loss mask: the main model's, k positions further on (eq. 24).

    `targets[:, i]` is token i+1, so token i+k+1 is `targets[:, i + k]`.
    """
    return shift_left(targets, k), shift_left(loss_mask, k)


def masked_cross_entropy(
    logits: Float[Array, "B T V"], targets: Int[Array, "B T"], mask: Float[Array, "B T"]
) -> Float[Array, ""]:
    """Mean cross-entropy over the positions where `mask` is 1."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mtp_loss(
    depth_losses: Float[Array, " K"], weight: Float[Array, ""] | float
) -> Float[Array, ""]:
    """Eq. 25: lambda / D times the sum of the D modules' losses."""
    return weight * jnp.mean(depth_losses)


class MTPModule(nnx.Module):
    """One MTP depth: eqs. 21-22, and the RMSNorm in front of the shared output head.

    `block` is a transformer block built by the model (attention and FFN of the model's own kinds:
    GQA or MLA, dense or MoE); the module only wires it between the projection and the head.
    """

    def __init__(self, cfg: ModelConfig, block: nnx.Module, *, rngs: nnx.Rngs):
        D, eps, dtype = cfg.d_model, cfg.norm_eps, cfg.weight_dtype
        self.enorm = RMSNorm(D, eps=eps, param_dtype=dtype)  # on Emb(t_{i+k})
        self.hnorm = RMSNorm(D, eps=eps, param_dtype=dtype)  # on h^{k-1}_i
        self.eh_proj = dense(2 * D, D, cfg, rngs=rngs)  # M_k
        self.block = block
        self.head_norm = RMSNorm(D, eps=eps, param_dtype=dtype)  # V3's `shared_head.norm`

    def __call__(
        self,
        previous: Float[Array, "B T D"],
        next_embedding: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        *,
        key_mask: Bool[Array, "B S"] | None = None,
        cache: dict[str, Array] | None = None,
        index: Int[Array, ""] | int = 0,
    ) -> tuple[Float[Array, "B T D"], dict[str, Array] | None, dict[str, Array] | None]:
        """h^k from h^{k-1} and the embedding of token i+k; returns (h^k, cache, MoE stats)."""
        B, T, D = previous.shape
        both = jnp.concatenate([self.enorm(next_embedding), self.hnorm(previous)], axis=-1)
        x = self.eh_proj(both.reshape(B * T, 2 * D)).reshape(B, T, D)  # eq. 21
        x, cache, stats = self.block(x, positions, key_mask=key_mask, cache=cache, index=index)
        return self.head_norm(x), cache, stats  # eq. 22; the shared head reads h^k


def mtp_hidden_states(
    modules: Iterable[MTPModule],
    embed: nnx.Module,
    hidden: Float[Array, "B T D"],
    tokens: Int[Array, "B T"],
    positions: Int[Array, "B T"],
    pad_id: int = 0,
) -> tuple[list[Float[Array, "B T D"]], list[dict[str, Array]]]:
    """h^1 .. h^D over whole sequences (training), from the main model's h^0 and the input tokens.

    `embed` is the model's (shared) embedding. Returns the D hidden states and the MoE statistics
    of the modules' blocks that have an MoE feed-forward.
    """
    states, stats = [], []
    h = hidden
    for k, module in enumerate(modules, start=1):
        h, _, s = module(h, embed(shift_left(tokens, k, pad_id)), positions)
        states.append(h)
        if s is not None:
            stats.append(s)
    return states, stats


def mtp_depth_losses(
    model: nnx.Module,
    hidden: Float[Array, "B T D"],
    batch: dict[str, Array],
) -> tuple[Float[Array, " K"], list[dict[str, Array]]]:
    """L^1 .. L^D of eq. 24 for a training batch ({"inputs", "targets", "loss_mask"}).

    `model` is a `minids.model.Transformer` built with `cfg.mtp`, and `hidden` its h^0.
    """
    tokens = batch["inputs"]
    B, T = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    states, stats = mtp_hidden_states(model.mtp, model.embed, hidden, tokens, positions)
    losses = []
    for k, h in enumerate(states, start=1):
        targets, mask = mtp_targets(batch["targets"], batch["loss_mask"], k)
        losses.append(masked_cross_entropy(model.output_head(h), targets, mask))
    return jnp.stack(losses), stats


def drop_mtp(model: nnx.Module) -> nnx.Module:
    """The same main model without its MTP modules (`cfg.mtp=None`): for plain decoding or export.

    The weights are shared with `model`'s (no copy); the main model's outputs are unchanged, since
    nothing in it reads the modules.
    """
    if model.cfg.mtp is None:
        return model
    graphdef, state = nnx.split(model)
    plain = nnx.merge(graphdef, state)  # a second view, then cut the modules from it
    plain.mtp = None
    plain.cfg = model.cfg.replace(mtp=None)
    return plain


def speculative_speedup(acceptance: float, draft_cost: float) -> float:
    """Tokens per second of self-speculative decoding over plain decoding, in the simplest model.

    Each step emits 1 + acceptance tokens (the main model's token, and the draft when accepted) for
    the cost of one main-model step plus `draft_cost` (the MTP module's share, relative to the main
    step, and the verification of two tokens instead of one). V3's 85-90% at a small draft cost
    gives about 1.8x.
    """
    return (1.0 + acceptance) / (1.0 + draft_cost)

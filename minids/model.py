"""The Transformer: blocks assembled from a `ModelConfig`, and nothing else.

A pre-norm decoder (as in LLaMA and DeepSeek): each block adds attention of the normalised stream,
then a feed-forward network of the normalised stream, to the residual stream x:

    x = x + Attention(RMSNorm(x))
    x = x + FFN(RMSNorm(x))

then a final RMSNorm and a linear head give next-token logits. With `cfg.mtp` the model also holds
the multi-token prediction modules (minids/mtp.py), which read its final normalised hidden state.

Shape letters, used in every module's annotations and einsums:

    B batch            T query length        S key length (cache slots)
    D model width      N query heads         M key/value heads (N = M * G)
    G group size       H head dim            F feed-forward width
    E experts          K top-k: experts per token, or DSA's chosen tokens   C latent width (kv_lora_rank)
    R rope dim         V vocabulary          L layers
    Q the G*T query rows that share one key/value head (attention's heads-first layout)
"""

from __future__ import annotations

from typing import no_type_check

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Bool, Float, Int

from minids.attention import Attention
from minids.config import ModelConfig, moe_param_counts, param_counts
from minids.dsa import SparseMLA
from minids.fp8 import use_fp8_linears
from minids.layers import Embedding, RMSNorm, SwiGLU, dense
from minids.mla import MLA
from minids.moe import MoE
from minids.mtp import MTPModule

MAX_BUILD_PARAMS = (
    20e9  # 80 GB of float32 weights: more than one accelerator holds with its optimizer
)


@no_type_check  # a pytree: JAX rebuilds it with placeholder leaves (None, tracers)
@struct.dataclass
class KVCache:
    """Per-layer cache buffers, which slots hold real tokens, and the next slot to write.

    A layer's buffers are {"k", "v"} for GQA attention and {"c_kv", "k_rope"} for MLA.
    """

    layers: tuple[dict[str, Array], ...]
    key_mask: Bool[Array, "B S"]
    index: Int[Array, ""]

    @property
    def max_len(self) -> int:
        return self.key_mask.shape[1]

    def nbytes(self) -> int:
        """Bytes held by the cache buffers of every layer (not counting `key_mask`)."""
        return sum(a.nbytes for layer in self.layers for a in layer.values())


class Block(nnx.Module):
    """Attention (GQA, or MLA with `cfg.mla`) then a feed-forward network (SwiGLU, or MoE if `use_moe`)."""

    def __init__(self, cfg: ModelConfig, *, use_moe: bool = False, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
        if cfg.mla is None:
            self.attn = Attention(cfg, rngs=rngs)
        else:  # DSA (minids/dsa.py) is MLA with a lightning indexer
            self.attn = (SparseMLA if cfg.mla.dsa else MLA)(cfg, rngs=rngs)
        self.ffn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
        self.use_moe = use_moe
        self.ffn = MoE(cfg, rngs=rngs) if use_moe else SwiGLU(cfg, rngs=rngs)

    def __call__(self, x, positions, *, key_mask=None, cache=None, index=0):
        """Returns (x, cache, stats): stats are the MoE layer's routing statistics, or None."""
        h, cache = self.attn(
            self.attn_norm(x), positions, key_mask=key_mask, cache=cache, index=index
        )
        x = x + h
        stats = None
        if self.use_moe:
            h, stats = self.ffn(self.ffn_norm(x))
        else:
            h = self.ffn(self.ffn_norm(x))
        return x + h, cache, stats


class Transformer(nnx.Module):
    """A decoder-only language model: `model(tokens)` gives logits (B, T, V) in float32.

    The weights are drawn from `nnx.Rngs(cfg.seed)` unless `rngs` is given. To train one config
    from several seeds, pass `rngs=nnx.Rngs(seed)` and keep `cfg`: the config is part of what
    `nnx.jit` compiles, so the runs then share one compiled train step.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        size = param_counts(cfg).total
        if size > MAX_BUILD_PARAMS:
            raise ValueError(
                f"this config has {size / 1e9:.1f}B parameters; minids builds models of up to "
                f"{MAX_BUILD_PARAMS / 1e9:.0f}B (the DeepSeek presets feed minids.cost, they are not built)"
            )
        rngs = rngs if rngs is not None else nnx.Rngs(cfg.seed)
        self.cfg = cfg
        self.embed = Embedding(cfg, rngs=rngs)
        n_dense = cfg.n_layers if cfg.moe is None else cfg.moe.n_dense_layers
        self.blocks = nnx.List(
            [Block(cfg, use_moe=i >= n_dense, rngs=rngs) for i in range(cfg.n_layers)]
        )
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
        self.lm_head = (
            None if cfg.tie_embeddings else dense(cfg.d_model, cfg.vocab_size, cfg, rngs=rngs)
        )
        # Multi-token prediction (V3 §2.2): D modules, each with a block like the last main one;
        # they share the embedding and the output head above.
        self.mtp = (
            None
            if cfg.mtp is None
            else nnx.List(
                [
                    MTPModule(cfg, Block(cfg, use_moe=cfg.moe is not None, rngs=rngs), rngs=rngs)
                    for _ in range(cfg.mtp.depth)
                ]
            )
        )
        if (
            cfg.fp8 is not None
        ):  # every linear layer's GEMMs in FP8, the output head kept out (V3 §3.3.1)
            use_fp8_linears(self, cfg.fp8, keep=(self.lm_head,) if self.lm_head is not None else ())

    def _logits(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        return self.output_head(self.final_norm(x))

    def output_head(self, h: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        """The output head alone, on normalised hidden states (the MTP modules share it)."""
        B, T, D = h.shape
        h = h.reshape(B * T, D)  # one row per token (see the note in layers.py)
        logits = self.embed.attend(h) if self.lm_head is None else self.lm_head(h)
        return logits.reshape(B, T, -1).astype(jnp.float32)

    def __call__(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"] | None = None,
        key_mask: Bool[Array, "B T"] | None = None,
    ) -> Float[Array, "B T V"]:
        """Full-sequence causal forward pass (training, evaluation, scoring).

        `key_mask` (False for padding) is needed only when padding comes *before* real tokens.
        """
        return self.forward_with_aux(tokens, positions, key_mask)[0]

    def forward_with_aux(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"] | None = None,
        key_mask: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T V"], dict[str, Array]]:
        """Logits and the MoE layers' routing statistics, stacked over the L' MoE layers.

        aux: `aux_loss` (summed over layers, already weighted by alpha), `load` (L', E),
        `max_vio` (L',), `dropped_frac` (L',). Empty for a dense model.
        """
        hidden, aux = self.final_hidden(tokens, positions, key_mask)
        return self.output_head(hidden), aux

    def final_hidden(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"] | None = None,
        key_mask: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], dict[str, Array]]:
        """The final normalised hidden state (what the head reads; the MTP modules' h^0) and the
        MoE statistics of `forward_with_aux`."""
        B, T = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T), (B, T))
        x = self.embed(tokens)
        layer_stats = []
        for block in self.blocks:
            x, _, stats = block(x, positions, key_mask=key_mask)
            if stats is not None:
                layer_stats.append(stats)
        aux = {}
        if layer_stats:
            aux = {k: jnp.stack([s[k] for s in layer_stats]) for k in layer_stats[0]}
            aux["aux_loss"] = jnp.sum(aux["aux_loss"])
        return self.final_norm(x), aux

    def moe_layers(self) -> list[MoE]:
        """The MoE feed-forward modules, in layer order (empty for a dense model)."""
        return [block.ffn for block in self.blocks if block.use_moe]

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache with `max_len` slots per sequence."""
        return KVCache(
            layers=tuple(block.attn.init_cache(batch, max_len) for block in self.blocks),
            key_mask=jnp.zeros((batch, max_len), dtype=bool),
            index=jnp.zeros((), dtype=jnp.int32),
        )

    def forward_cached(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        cache: KVCache,
        token_mask: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T V"], KVCache]:
        """Run T new tokens against the cache (a prompt prefill, or one decoding step).

        `token_mask` is False for padding tokens: they are stored but never attended to.
        """
        hidden, cache = self.final_hidden_cached(tokens, positions, cache, token_mask)
        return self.output_head(hidden), cache

    def final_hidden_cached(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        cache: KVCache,
        token_mask: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], KVCache]:
        """`forward_cached`'s final normalised hidden state, before the head."""
        B, T = tokens.shape
        if token_mask is None:
            token_mask = jnp.ones((B, T), dtype=bool)
        key_mask = jax.lax.dynamic_update_slice(cache.key_mask, token_mask, (0, cache.index))
        x = self.embed(tokens)
        new_layers = []
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x, layer_cache, _ = block(
                x, positions, key_mask=key_mask, cache=layer_cache, index=cache.index
            )
            new_layers.append(layer_cache)
        cache = KVCache(layers=tuple(new_layers), key_mask=key_mask, index=cache.index + T)
        return self.final_norm(x), cache


def count_params(model: nnx.Module, *, activated: bool = False) -> int:
    """Number of trainable parameters (`nnx.Param` leaves) in a model.

    `activated=True` counts only what one token's forward pass reads: one row of the embedding table
    (unless it is tied to the output head), and in an MoE layer the router, the shared experts and
    K of the E routed experts (DeepSeek-V3's "37B activated of 671B total"); `minids.cost` counts
    the same from a config alone. A model built with `cfg.mtp` counts its MTP modules too, which
    `minids.cost` keeps apart (`ParamCounts.total + ParamCounts.mtp`).
    """
    params = nnx.state(model, nnx.Param)
    total = int(sum(x.size for x in jax.tree.leaves(params)))
    if not activated or not isinstance(model, Transformer):
        return total
    cfg = model.cfg
    lookup = 0 if cfg.tie_embeddings else (cfg.vocab_size - 1) * cfg.d_model  # all rows but one
    if cfg.moe is None:
        return total - lookup
    moe_total, moe_activated = moe_param_counts(cfg)
    n_moe = len(model.moe_layers()) + (len(model.mtp) if model.mtp is not None else 0)
    return total - lookup - n_moe * (moe_total - moe_activated)

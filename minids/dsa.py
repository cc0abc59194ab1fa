"""DeepSeek Sparse Attention (DSA): MLA reads only the k earlier tokens a small indexer picks.

DeepSeek-V3.2 makes MLA sparse (DeepSeek-V3.2-Exp report §1-2, equations numbered as there; the
same design is DeepSeek-V3.2, arXiv 2512.02556, §2.1). A *lightning indexer* scores every earlier
token s for the query token t with a few cheap heads j = 1..H_I (eq. 1):

    I[t, s] = sum_j  w[t, j] · ReLU(q_I[t, j] · k_I[s])

    q_I[t, j] = RoPE(W_qI c_Q[t])     from MLA's query latent c_Q = RMSNorm(W_DQ h), H_I heads of d_I
    k_I[s]    = RoPE(LayerNorm(W_kI h[s]))    one key of d_I per token, shared by the heads
    w[t, j]   = (W_w h[t])_j / sqrt(H_I)      a per-head weight, from the token itself

Each query keeps the k tokens with the highest scores among those it may see (causal masking first,
then top-k), and MLA attends to those latents only (eq. 2):

    u[t] = Attn(h[t], {c[s] : I[t, s] in Top-k(I[t, :])})

Work. The indexer still looks at all L·L pairs, but with H_I·d_I multiply-adds per pair (V3.2: 64
heads of 128, in FP8) instead of MLA's N·(2C + R) (128·(1024 + 64)). The main attention then costs
O(L·k): `sparse_attention` *gathers* the k chosen latents per query and never forms an L x L score
matrix. `sparse_attention_reference` is the readable version: the same choice written as a dense
mask over all S keys, O(L²) again; `tests/test_dsa.py` checks that they agree.

Training (V3.2-Exp §2.1). Top-k has no gradient, so the indexer cannot learn from the language
model's loss through its choice. It learns to imitate the main attention instead: p[t, :], the main
attention's probabilities summed over the N heads and L1-normalised over the keys, is the target of
a KL divergence. Two stages:

- dense warm-up (`stage="warmup"`): attention stays dense, every parameter but the indexer's is
  frozen, and the loss is sum_t KL(p[t, :] || Softmax(I[t, :])) over all visible keys (eq. 3).
- sparse training (`stage="sparse"`): attention is sparse and every parameter trains. The indexer's
  loss is the same KL restricted to the selected set S_t (eq. 4), its input is detached from the
  graph (so the KL never moves the shared query latent or the hidden states), and the main model
  learns from the language-model loss alone (the KL's target p is a constant).

minids averages the KL over query tokens and layers (the report sums it over tokens): the sum would
make the loss scale with the batch's length. `stage="dense"` ignores the indexer: plain MLA.

Where the references differ, and what minids follows:

- The indexer's RoPE. It turns the *first* R channels of each indexer query head and of the key
  ([rope ; rest], the reverse of MLA's heads, [nope ; rope]) in half-split pairs (i, i + R/2),
  while V3's main attention rotates interleaved pairs (2i, 2i + 1). DeepSeek's first release of its
  inference code (September 2025) rotated interleaved pairs in the indexer too; DeepSeek corrected
  it in November 2025 to the half-split layout the indexer was trained with. transformers'
  `DeepseekV32ForCausalLM` follows the corrected layout, and so does minids (whose RoPE is
  half-split everywhere, so the indexer's weights load unpermuted); `tests/test_hf_parity_long.py`
  checks the logits against transformers.
- DeepSeek's code passes q_I and k_I through a Hadamard transform and FP8 before scoring. The
  transform is orthogonal (dot products unchanged), so only FP8 rounding differs; transformers and
  minids score in float32 without either.
- transformers turns the top-k choice into a dense additive mask over all keys (O(L²) memory, like
  the reference here) and computes the indexer under `torch.no_grad` (no training path).
- DeepSeek's code scales the head weights by 1/sqrt(d_I); transformers scales q·k inside the ReLU.
  The scale is positive, so both give the same scores; minids scales q·k.

The indexer adds d_I numbers per token to each layer's cache (its key): V3.2 caches 512 + 64 + 128.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.attention import MASKED, attention_mask, write_cache
from minids.config import ModelConfig
from minids.layers import apply_rope, dense
from minids.mla import MLA, absorbed_attention, absorbed_scores, split_latent

DSA_STAGES = ("dense", "warmup", "sparse")
INDEXER_NORM_EPS = 1e-6  # the LayerNorm on the indexer's key, as in DeepSeek's code

# ------------------------------------------------------------------------- the pieces, as functions


def index_scores(
    q: Float[Array, "B T N H"],
    weights: Float[Array, "B T N"],
    k: Float[Array, "B S H"],
    mask: Bool[Array, "#B T S"],
) -> Float[Array, "B T S"]:
    """I[t, s] = sum_j w[t, j] ReLU(q[t, j] · k[s] / sqrt(d_I)) (eq. 1); MASKED where t may not see s.

    Here N is the indexer's heads H_I and H its width d_I.
    """
    f32 = jnp.float32
    dots = jnp.einsum("BTNH,BSH->BTNS", q, k, preferred_element_type=f32) * q.shape[-1] ** -0.5
    scores = jnp.einsum("BTN,BTNS->BTS", weights.astype(f32), jax.nn.relu(dots))
    return jnp.where(mask, scores, MASKED)


def select_topk(
    scores: Float[Array, "B T S"], mask: Bool[Array, "#B T S"], k: int
) -> tuple[Int[Array, "B T K"], Bool[Array, "B T K"]]:
    """The k best-scored keys of each query, and whether each may be read.

    `scores` are already MASKED where the mask is False, so visible keys always win; a query that
    sees fewer than k keys gets some invisible ones too, marked False. K = min(k, S). Exact ties
    (a score is exactly 0 where every head's ReLU is 0) go to the lower position; torch.topk, in
    transformers, may keep another of the tied tokens.
    """
    _, idx = jax.lax.top_k(scores, min(k, scores.shape[-1]))
    valid = jnp.take_along_axis(jnp.broadcast_to(mask, scores.shape), idx, axis=-1)
    return idx, valid


def gather_tokens(x: Float[Array, "B S C"], idx: Int[Array, "B T K"]) -> Float[Array, "B T K C"]:
    """x[b, idx[b, t, j]] for every query t: the k chosen rows of each query, copied out."""
    return jax.vmap(lambda rows, chosen: rows[chosen])(x, idx)


def sparse_attention(
    q_nope: Float[Array, "B T N Hn"],
    q_rope: Float[Array, "B T N R"],
    c_kv: Float[Array, "B S C"],
    k_rope: Float[Array, "B S R"],
    w_uk: Float[Array, "C N Hn"],
    w_uv: Float[Array, "C N Hv"],
    idx: Int[Array, "B T K"],
    valid: Bool[Array, "B T K"],
    scale: float,
) -> tuple[Float[Array, "B T N Hv"], Float[Array, "B T N K"]]:
    """Absorbed MLA over the k gathered latents of each query (eq. 2), and its probabilities.

    As in `minids.mla.absorbed_attention` (MLA's "MQA mode", which V3.2 runs DSA in), but each
    query scores only its own k latents: O(T·k·N·(2C + R)) work, whatever S is.
    """
    f32 = jnp.float32
    c_sel, r_sel = gather_tokens(c_kv, idx), gather_tokens(k_rope, idx)  # (B, T, K, C), (.., R)
    q_latent = jnp.einsum("BTNH,CNH->BTNC", q_nope, w_uk)  # W_UK absorbed into the query
    scores = jnp.einsum("BTNC,BTKC->BTNK", q_latent, c_sel, preferred_element_type=f32)
    scores += jnp.einsum("BTNR,BTKR->BTNK", q_rope, r_sel, preferred_element_type=f32)
    scores = jnp.where(valid[:, :, None, :], scores * scale, MASKED)
    probs = jax.nn.softmax(scores, axis=-1)
    latent_out = jnp.einsum("BTNK,BTKC->BTNC", probs.astype(c_kv.dtype), c_sel)
    return jnp.einsum("BTNC,CNH->BTNH", latent_out, w_uv), probs


def chosen_mask(idx: Int[Array, "B T K"], n_keys: int) -> Bool[Array, "B T S"]:
    """True at the chosen keys: the top-k choice as a dense (B, T, S) mask."""
    return jnp.any(idx[..., None] == jnp.arange(n_keys).reshape(1, 1, 1, n_keys), axis=-2)


def sparse_attention_reference(
    q_nope: Float[Array, "B T N Hn"],
    q_rope: Float[Array, "B T N R"],
    c_kv: Float[Array, "B S C"],
    k_rope: Float[Array, "B S R"],
    w_uk: Float[Array, "C N Hn"],
    w_uv: Float[Array, "C N Hv"],
    idx: Int[Array, "B T K"],
    mask: Bool[Array, "#B T S"],
    scale: float,
) -> Float[Array, "B T N Hv"]:
    """The same attention the plain way: dense MLA with every key but the chosen ones masked."""
    keep = mask & chosen_mask(idx, c_kv.shape[1])
    return absorbed_attention(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, keep, scale)


def attention_target(probs: Float[Array, "B T N S"]) -> Float[Array, "B T S"]:
    """p[t, :]: the main attention's probabilities summed over heads, L1-normalised over keys.

    A constant for the indexer's loss (`stop_gradient`): the KL never trains the main model.
    """
    summed = jax.lax.stop_gradient(jnp.sum(probs.astype(jnp.float32), axis=2))
    return summed / jnp.maximum(jnp.sum(summed, axis=-1, keepdims=True), 1e-30)


def indexer_kl(
    target: Float[Array, "B T S"], scores: Float[Array, "B T S"], valid: Bool[Array, "#B T S"]
) -> Float[Array, ""]:
    """Mean over queries of KL(p[t, :] || Softmax(I[t, :])), both over the `valid` keys (eqs. 3-4).

    Dense warm-up: all visible keys (S of them). Sparse stage: the k selected ones, gathered.
    """
    valid = jnp.broadcast_to(valid, scores.shape)
    log_q = jax.nn.log_softmax(jnp.where(valid, scores, MASKED), axis=-1)
    p = jnp.where(valid, target, 0.0)
    kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - log_q), 0.0), axis=-1)
    rows = jnp.any(valid, axis=-1)  # padding queries see nothing and count for nothing
    return jnp.sum(jnp.where(rows, kl, 0.0)) / jnp.maximum(jnp.sum(rows), 1)


def topk_recall(
    scores: Float[Array, "B T S"],
    target: Float[Array, "B T S"],
    mask: Bool[Array, "#B T S"],
    k: int,
) -> Float[Array, ""]:
    """How many of the main attention's k heaviest keys the indexer's top k finds, as a fraction.

    Over the queries that see more than k keys (for the others every choice is right).
    """
    S = scores.shape[-1]
    k = min(k, S)
    _, mine = jax.lax.top_k(scores, k)
    _, best = jax.lax.top_k(jnp.where(mask, target, -1.0), k)
    found = jnp.sum(chosen_mask(mine, S) & chosen_mask(best, S), axis=-1) / k  # (B, T)
    rows = jnp.sum(jnp.broadcast_to(mask, scores.shape), axis=-1) > k
    return jnp.sum(jnp.where(rows, found, 0.0)) / jnp.maximum(jnp.sum(rows), 1)


# ------------------------------------------------------------------------------------- the modules


class LightningIndexer(nnx.Module):
    """The indexer's projections: H_I query heads from the query latent, one key, per-head weights."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        m, d = cfg.mla, cfg.mla.dsa
        self.n_heads, self.head_dim, self.rope = (
            d.index_n_heads,
            d.index_head_dim,
            m.qk_rope_head_dim,
        )
        self.rope_theta, self.yarn = cfg.rope_theta, cfg.yarn
        self.wq_b = dense(m.q_lora_rank, d.index_n_heads * d.index_head_dim, cfg, rngs=rngs)
        self.wk = dense(cfg.d_model, d.index_head_dim, cfg, rngs=rngs)
        self.k_norm = nnx.LayerNorm(
            d.index_head_dim,
            epsilon=INDEXER_NORM_EPS,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            use_fast_variance=False,
            rngs=rngs,
        )
        self.weights_proj = dense(cfg.d_model, d.index_n_heads, cfg, rngs=rngs)

    def _rope_first(self, x: Float[Array, "B T N H"], positions: Int[Array, "B T"]):
        """RoPE on the first R channels (half-split pairs), the rest unchanged."""
        turned = apply_rope(x[..., : self.rope], positions, self.rope_theta, self.yarn)
        return jnp.concatenate([turned, x[..., self.rope :]], axis=-1)

    def __call__(
        self,
        tokens: Float[Array, "BT D"],
        q_latent: Float[Array, "BT Q"],
        positions: Int[Array, "B T"],
    ) -> tuple[Float[Array, "B T N H"], Float[Array, "B T N"], Float[Array, "B T H"]]:
        """(queries, head weights, keys) of T tokens, to score with `index_scores`."""
        B, T = positions.shape
        q = self.wq_b(q_latent).reshape(B, T, self.n_heads, self.head_dim)
        k = self.k_norm(self.wk(tokens)).reshape(B, T, 1, self.head_dim)
        weights = self.weights_proj(tokens).reshape(B, T, self.n_heads) * self.n_heads**-0.5
        return self._rope_first(q, positions), weights, self._rope_first(k, positions)[:, :, 0]


class IndexerMetric(nnx.Variable):
    """A number the last training pass left behind (the indexer's KL loss, its top-k recall)."""


class SparseMLA(MLA):
    """MLA with a lightning indexer: attends to the top-k tokens (`stage` "sparse", the default).

    The cache gains the indexer's keys: {"c_kv", "k_rope", "index_k": (B, S, d_I)}. A pass without
    a cache (training, scoring) stores its indexer loss in `indexer_loss` (and, warming up, the
    top-k recall in `indexer_recall`); `stage` is set for the whole model with `set_stage`.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.indexer = LightningIndexer(cfg, rngs=rngs)
        self.topk = cfg.mla.dsa.index_topk
        self.stage = "sparse"
        self.indexer_loss = IndexerMetric(jnp.zeros((), jnp.float32))
        self.indexer_recall = IndexerMetric(jnp.zeros((), jnp.float32))

    def init_cache(self, batch: int, max_len: int) -> dict[str, Array]:
        cache = super().init_cache(batch, max_len)
        cache["index_k"] = jnp.zeros((batch, max_len, self.indexer.head_dim), self.dtype)
        return cache

    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        *,
        key_mask: Bool[Array, "B S"] | None = None,
        cache: dict[str, Array] | None = None,
        index: Int[Array, ""] | int = 0,
    ) -> tuple[Float[Array, "B T D"], dict[str, Array] | None]:
        """Same contract as `MLA.__call__`."""
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)
        q_latent = self.q_norm(self.wq_a(tokens))
        # The indexer's input is detached (V3.2-Exp §2.1): only its KL loss trains it, and that
        # loss never reaches the query latent or the hidden states it shares with the main model.
        iq, iw, ik = self.indexer(
            jax.lax.stop_gradient(tokens), jax.lax.stop_gradient(q_latent), positions
        )
        if self.stage == "dense":  # plain MLA; the cache still receives the indexer's keys
            rest = None if cache is None else {k: v for k, v in cache.items() if k != "index_k"}
            out, rest = super().__call__(x, positions, key_mask=key_mask, cache=rest, index=index)
            if cache is not None:
                rest.update(write_cache(cache, {"index_k": ik}, index))
            return out, rest
        q_nope, q_rope = self.queries(tokens, positions, q_latent)
        kv = self.wkv_a(tokens).reshape(B, T, self.rank + self.rope)
        c_kv, k_rope = split_latent(
            kv, self.kv_norm.scale[...], positions, self.rank, self.rope_theta, self.eps, self.yarn
        )
        if cache is not None:
            cache = write_cache(cache, {"c_kv": c_kv, "k_rope": k_rope, "index_k": ik}, index)
            c_kv, k_rope, ik = cache["c_kv"], cache["k_rope"], cache["index_k"]
        mask = attention_mask(T, c_kv.shape[1], index, key_mask)
        scores = index_scores(iq, iw, ik, mask)  # (B, T, S)
        w_uk, w_uv = self.up_projections()
        if self.stage == "warmup":  # dense attention; the indexer learns its distribution (eq. 3)
            logits = absorbed_scores(q_nope, q_rope, c_kv, k_rope, w_uk, self.scale)
            probs = jax.nn.softmax(jnp.where(mask[:, None], logits, MASKED), axis=-1)
            latent_out = jnp.einsum("BNTS,BSC->BTNC", probs.astype(c_kv.dtype), c_kv)
            out = jnp.einsum("BTNC,CNH->BTNH", latent_out, w_uv)
            if cache is None:
                target = attention_target(probs.transpose(0, 2, 1, 3))  # (B, T, S)
                self.indexer_loss[...] = indexer_kl(target, scores, mask)
                self.indexer_recall[...] = topk_recall(scores, target, mask, self.topk)
        else:  # sparse: the top-k latents only (eq. 2); the KL on the selected set (eq. 4)
            idx, valid = select_topk(scores, mask, self.topk)
            out, probs = sparse_attention(
                q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, idx, valid, self.scale
            )
            if cache is None:
                target = attention_target(probs)  # over the k chosen keys, (B, T, K)
                chosen_scores = jnp.take_along_axis(scores, idx, axis=-1)
                self.indexer_loss[...] = indexer_kl(target, chosen_scores, valid)
        out = out.reshape(B * T, self.n_heads * self.v_dim)
        return self.wo(out).reshape(B, T, D), cache


# ------------------------------------------------------------------------- the two training stages

# The indexer's parameters: the only ones the dense warm-up trains.
INDEXER_PARAMS = nnx.All(nnx.Param, nnx.PathContains("indexer"))


def sparse_layers(model: nnx.Module) -> list[SparseMLA]:
    """The model's DSA attention layers, in order."""
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, SparseMLA)]


def set_stage(model: nnx.Module, stage: str) -> None:
    """Put every DSA layer in `stage`: "dense" (indexer unused), "warmup" or "sparse"."""
    if stage not in DSA_STAGES:
        raise ValueError(f"stage must be one of {list(DSA_STAGES)}, got {stage!r}")
    layers = sparse_layers(model)
    if not layers:
        raise ValueError("the model has no DSA layers: build it with ModelConfig.mla.dsa set")
    for layer in layers:
        layer.stage = stage


def indexer_loss(model: nnx.Module) -> Float[Array, ""]:
    """The indexer's KL loss of the last pass without a cache, averaged over the DSA layers."""
    return jnp.mean(jnp.stack([layer.indexer_loss[...] for layer in sparse_layers(model)]))


def indexer_recall(model: nnx.Module) -> Float[Array, ""]:
    """Top-k recall of the last warm-up pass, averaged over the DSA layers."""
    return jnp.mean(jnp.stack([layer.indexer_recall[...] for layer in sparse_layers(model)]))


def _require_stage(model: nnx.Module, stage: str) -> None:
    stages = {layer.stage for layer in sparse_layers(model)}
    if stages != {stage}:
        raise ValueError(
            f"this step needs every DSA layer in stage {stage!r} (set_stage(model, {stage!r})), "
            f"found {sorted(stages) or 'no DSA layers'}"
        )


def _answer_ce(logits: Float[Array, "B T V"], batch: dict[str, Array]) -> Float[Array, ""]:
    """Mean cross-entropy over the tokens where loss_mask is 1 (as `minids.train.loss_fn`)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"]
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def indexer_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> nnx.Optimizer:
    """An optimizer of the indexer's parameters only: the dense warm-up's (V3.2-Exp: lr 1e-3)."""
    return nnx.Optimizer(model, tx, wrt=INDEXER_PARAMS)


@nnx.jit
def warmup_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict[str, Array]):
    """One dense warm-up step: dense attention, only the indexer learns, by eq. 3's KL.

    `optimizer` from `indexer_optimizer`; the layers in stage "warmup". Returns the KL and the
    indexer's top-k recall of the main attention, both before the update.
    """
    _require_stage(model, "warmup")

    def loss(model):
        model(batch["inputs"])
        return indexer_loss(model)

    kl, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, INDEXER_PARAMS))(model)
    optimizer.update(model, grads)
    return {"indexer_kl": kl, "recall": indexer_recall(model)}


@nnx.jit
def sparse_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict[str, Array]):
    """One sparse-stage step: top-k attention, everything learns from CE + the selected-set KL.

    The two losses train disjoint parameters: the KL reaches only the indexer (its input is
    detached, its target constant), and the cross-entropy cannot reach the indexer (top-k has no
    gradient), so their sum trains each part by its own loss, as V3.2-Exp §2.1 prescribes.
    """
    _require_stage(model, "sparse")

    def loss(model):
        ce = _answer_ce(model(batch["inputs"]), batch)
        kl = indexer_loss(model)
        return ce + kl, (ce, kl)

    (_, (ce, kl)), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    optimizer.update(model, grads)
    return {"ce": ce, "indexer_kl": kl}

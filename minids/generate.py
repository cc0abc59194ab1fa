"""Sampling from a model with a KV cache, compiled end to end.

Prompts of different lengths are left-padded into one batch so that they all end at the same slot;
a mask keeps padding out of attention, and each sequence's positions count only its real tokens.
One prefill pass writes the prompts' keys and values into the cache, then a `lax.while_loop` decodes
one token per iteration: embed it, attend over the cache, sample. The loop stops when every sequence
has produced EOS or `max_new_tokens` is reached; a finished sequence emits PAD from then on.

Sampling: temperature 0 is greedy (argmax); otherwise logits are divided by the temperature, then
optionally restricted to the `top_k` most likely tokens and/or the smallest set whose probability
reaches `top_p` (nucleus sampling, Holtzman et al., 2020), and sampled with an explicit `jax.random`
key. The same key gives the same samples.

`generate_speculative` (or `generate(..., speculative=True)`) is self-speculative decoding with a
model's first multi-token prediction module (DeepSeek-V3 §2.2 and §5.4.3; minids/mtp.py): the main
model picks token t+1, the module drafts token t+2 from the main model's hidden state and token t+1,
and one forward pass of the main model over both tokens both checks the draft and gives the
distribution of the token after. A draft is kept with probability min(1, p(d) / q(d)), p the main
model's and q the draft's (filtered) distribution; on a rejection the token is drawn again from
max(0, p - q), renormalised (Leviathan et al., 2023; Chen et al., 2023), so every token has exactly
the main model's distribution. Greedy decoding is the same rule with one-hot p and q: a draft is
kept when it is the main model's argmax, and the output equals plain greedy decoding token for
token. One pass of the loop writes two cache slots; a sequence whose draft was rejected masks its
second slot out, and when every sequence rejected, the cache index steps back over it (the rollback).

`generate_recompute` is the readable reference without a cache: it re-runs the whole sequence for
every new token. It gives the same greedy tokens, at a cost that grows with the square of the length
(`benchmarks/bench_train.py` measures the ratio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import no_type_check

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.data import CharTokenizer, check_vocab
from minids.model import Transformer


@dataclass
class Generation:
    tokens: np.ndarray  # (B, max_new_tokens) generated ids, PAD after EOS
    lengths: np.ndarray  # (B,) tokens generated before (not counting) EOS
    logprobs: (
        np.ndarray
    )  # (B, max_new_tokens) log-prob of each token under the model (temperature 1)


def sample_logits(
    logits: Float[Array, "B V"],
    key: Array,
    temperature: Array | float,
    top_k: int | None,
    top_p: Array | float,
) -> Int[Array, " B"]:
    """Pick one token per row: greedy at temperature 0, else temperature / top-k / top-p sampling."""
    greedy = jnp.argmax(logits, axis=-1)
    sampled = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1)
    return jnp.where(temperature > 0, sampled, greedy)


def filter_logits(
    logits: Float[Array, "B V"], temperature: Array | float, top_k: int | None, top_p: Array | float
) -> Float[Array, "B V"]:
    """Logits / temperature, with -inf outside the top-k and outside the top-p nucleus."""
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if top_k is not None:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    # Nucleus: keep the most likely tokens until their cumulative probability reaches top_p.
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep_sorted = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
    keep = (
        jnp.zeros_like(keep_sorted).at[jnp.arange(scaled.shape[0])[:, None], order].set(keep_sorted)
    )
    return jnp.where(keep, scaled, -jnp.inf)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 8):
    """Left-pad token lists to a common length (rounded up to `multiple` to limit recompiles)."""
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token sequences")
    width = -(-max(len(p) for p in prompts) // multiple) * multiple
    tokens = np.full((len(prompts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width), dtype=bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = p
        mask[i, width - len(p) :] = True
    return tokens, mask


def _positions(mask):
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


@partial(nnx.jit, static_argnames=("max_new_tokens", "top_k", "eos_id", "pad_id"))
def _generate_cached(
    model, tokens, mask, key, temperature, top_p, *, max_new_tokens, top_k, eos_id, pad_id
):
    B, P = tokens.shape
    cache = model.init_cache(B, P + max_new_tokens)
    positions = _positions(mask)
    logits, cache = model.forward_cached(tokens, positions, cache, mask)
    state = dict(
        step=jnp.zeros((), jnp.int32),
        logits=logits[:, -1],
        cache=cache,
        position=positions[:, -1] + 1,
        done=jnp.zeros((B,), bool),
        key=key,
        out=jnp.full((B, max_new_tokens), pad_id, jnp.int32),
        logprobs=jnp.zeros((B, max_new_tokens), jnp.float32),
    )

    def cond(s):
        return (s["step"] < max_new_tokens) & ~jnp.all(s["done"])

    def body(s):
        key, sub = jax.random.split(s["key"])
        token = sample_logits(s["logits"], sub, temperature, top_k, top_p)
        token = jnp.where(s["done"], pad_id, token)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(s["logits"]), token[:, None], axis=-1)[
            :, 0
        ]
        logits, cache = model.forward_cached(token[:, None], s["position"][:, None], s["cache"])
        return dict(
            step=s["step"] + 1,
            logits=logits[:, -1],
            cache=cache,
            position=s["position"] + 1,
            done=s["done"] | (token == eos_id),
            key=key,
            out=s["out"].at[:, s["step"]].set(token),
            logprobs=s["logprobs"].at[:, s["step"]].set(jnp.where(s["done"], 0.0, logprob)),
        )

    s = jax.lax.while_loop(cond, body, state)
    return s["out"], s["logprobs"]


@partial(nnx.jit, static_argnames=("max_new_tokens", "top_k", "eos_id", "pad_id"))
def _generate_recompute(
    model, tokens, mask, key, temperature, top_p, *, max_new_tokens, top_k, eos_id, pad_id
):
    B, P = tokens.shape
    buf = jnp.concatenate([tokens, jnp.full((B, max_new_tokens), pad_id, jnp.int32)], axis=1)
    buf_mask = jnp.concatenate([mask, jnp.zeros((B, max_new_tokens), bool)], axis=1)

    def body(step, s):
        buf, buf_mask, done, key = s
        logits = model(
            buf, _positions(buf_mask), key_mask=buf_mask
        )  # the whole sequence, every step
        last = jax.lax.dynamic_index_in_dim(logits, P + step - 1, axis=1, keepdims=False)
        key, sub = jax.random.split(key)
        token = jnp.where(done, pad_id, sample_logits(last, sub, temperature, top_k, top_p))
        buf = jax.lax.dynamic_update_slice(buf, token[:, None], (0, P + step))
        buf_mask = jax.lax.dynamic_update_slice(buf_mask, jnp.ones((B, 1), bool), (0, P + step))
        return buf, buf_mask, done | (token == eos_id), key

    buf, *_ = jax.lax.fori_loop(
        0, max_new_tokens, body, (buf, buf_mask, jnp.zeros((B,), bool), key)
    )
    return buf[:, P:]


def _check_sampling(model, max_new_tokens, temperature, top_k, top_p):
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a minids Transformer, got {type(model).__name__}")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (
        isinstance(top_k, bool)
        or not (isinstance(top_k, int) and 1 <= top_k <= model.cfg.vocab_size)
    ):
        raise ValueError(
            f"top_k must be None or an int in [1, {model.cfg.vocab_size}], got {top_k!r}"
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


@no_type_check  # checks its arguments itself, with a ValueError naming the bad one
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    key: Array | None = None,
    eos_id: int = CharTokenizer.EOS,
    pad_id: int = CharTokenizer.PAD,
    use_cache: bool = True,
    speculative: bool = False,
) -> Generation:
    """Continue each prompt (a list of token ids) by up to `max_new_tokens` tokens.

    `speculative=True`: self-speculative decoding with the model's MTP module (the same tokens
    greedily, the same distribution when sampling); returns a `SpeculativeGeneration`.
    """
    _check_sampling(model, max_new_tokens, temperature, top_k, top_p)
    if speculative and model.cfg.mtp is None:
        raise ValueError(
            "speculative=True drafts with the model's MTP module, and this model has none "
            "(cfg.mtp is None): train one with ModelConfig(mtp=MTPConfig())"
        )
    longest = max((len(p) for p in prompts), default=0)
    if longest > model.cfg.max_seq_len:
        i = [len(p) for p in prompts].index(longest)
        raise ValueError(
            f"prompt {i} is {longest} tokens long, longer than the model's max_seq_len "
            f"({model.cfg.max_seq_len}); shorten it or use a model with a larger max_seq_len"
        )
    tokens, mask = left_pad(prompts, pad_id)
    if (
        tokens.min() < 0 or tokens.max() >= model.cfg.vocab_size
    ):  # else a silent NaN or a wrap-around
        raise ValueError(
            f"prompt token ids (and pad_id) must be in [0, {model.cfg.vocab_size}), the model's "
            f"vocab_size; got ids from {tokens.min()} to {tokens.max()}"
        )
    key = jax.random.key(0) if key is None else key
    args = (
        model,
        jnp.asarray(tokens),
        jnp.asarray(mask),
        key,
        jnp.float32(temperature),
        jnp.float32(top_p),
    )
    static = dict(max_new_tokens=max_new_tokens, top_k=top_k, eos_id=eos_id, pad_id=pad_id)
    if speculative:
        return _speculative_result(_generate_speculative(*args, **static), eos_id, max_new_tokens)
    if use_cache:
        out, logprobs = _generate_cached(*args, **static)
    else:
        out, logprobs = (
            _generate_recompute(*args, **static),
            jnp.zeros((len(prompts), max_new_tokens)),
        )
    out = np.asarray(out)
    is_eos = out == eos_id
    lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), max_new_tokens)
    return Generation(tokens=out, lengths=lengths, logprobs=np.asarray(logprobs))


def generate_recompute(
    model: Transformer, prompts: Sequence[Sequence[int]], **kwargs
) -> Generation:
    """The reference without a cache (see the module docstring); same arguments as `generate`."""
    return generate(model, prompts, use_cache=False, **kwargs)


def generate_text(
    model: Transformer,
    tokenizer: CharTokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 256,
    **kwargs,
) -> list[str]:
    """Complete text prompts; returns the generated text of each, cut at EOS."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings; wrap a single prompt in a list")
    check_vocab(model.cfg.vocab_size, tokenizer)
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = [tokenizer.encode(p, bos=True) for p in prompts[start : start + batch_size]]
        gen = generate(model, chunk, max_new_tokens=max_new_tokens, **kwargs)
        results.extend(tokenizer.decode(row) for row in gen.tokens)
    return results


def task_accuracy(
    model: Transformer,
    examples: Sequence[dict[str, str]],
    tokenizer: CharTokenizer | None = None,
    *,
    max_new_tokens: int = 8,
    **kwargs,
) -> dict[str, float]:
    """Greedy exact-match accuracy per task (and "all") on (prompt, answer) examples.

    A shipped task grades with its own `check`; any other task compares the stripped strings.
    """
    from minids.data import TASKS

    tokenizer = tokenizer or CharTokenizer()
    outputs = generate_text(
        model, tokenizer, [e["prompt"] for e in examples], max_new_tokens=max_new_tokens, **kwargs
    )
    hits: dict[str, list[bool]] = {}
    for ex, out in zip(examples, outputs, strict=True):
        task = TASKS.get(ex["task"])
        ok = task.check(ex["prompt"], out) if task else out.strip() == ex["answer"].strip()
        hits.setdefault(ex["task"], []).append(ok)
    acc = {name: float(np.mean(v)) for name, v in hits.items()}
    acc["all"] = float(np.mean([h for v in hits.values() for h in v])) if hits else 0.0
    return acc


# --------------------------------------------------------------------- self-speculative decoding


@dataclass
class SpeculativeGeneration(Generation):
    drafted: np.ndarray  # (B, max_new_tokens) True where the MTP module drafted that token
    accepted: np.ndarray  # (B, max_new_tokens) True where the draft was kept
    steps: int  # passes of the decoding loop (forward passes of the main model after the prefill)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / drafts, over the batch."""
        return float(self.accepted.sum() / max(self.drafted.sum(), 1))


def token_probs(
    logits: Float[Array, "B V"], temperature: Array | float, top_k: int | None, top_p: Array | float
) -> Float[Array, "B V"]:
    """The distribution `sample_logits` draws from: one-hot on the argmax at temperature 0.

    (A `lax.cond`, so that greedy decoding skips the sort and softmax of the filters.)
    """

    def greedy(logits):
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)

    def sampled(logits):
        return jax.nn.softmax(filter_logits(logits, temperature, top_k, top_p), axis=-1)

    return jax.lax.cond(temperature > 0, sampled, greedy, logits)


def accept_draft(
    draft: Int[Array, " B"],
    p: Float[Array, "B V"],
    q: Float[Array, "B V"],
    key: Array,
) -> tuple[Bool[Array, " B"], Int[Array, " B"]]:
    """The speculative-sampling rule: keep draft d ~ q with probability min(1, p(d) / q(d)).

    Returns (accepted, replacement): the replacement, drawn from max(0, p - q) renormalised, is the
    token to use where the draft is rejected. Together they give a token distributed exactly as p.
    """
    u_key, r_key = jax.random.split(key)
    p_d = jnp.take_along_axis(p, draft[:, None], axis=-1)[:, 0]
    q_d = jnp.take_along_axis(q, draft[:, None], axis=-1)[:, 0]
    u = jax.random.uniform(u_key, draft.shape)
    accepted = u * q_d < p_d  # u < p(d) / q(d), without dividing by a q(d) that may be tiny
    residual = jnp.maximum(p - q, 0.0)
    residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0, residual, p)  # p == q: any
    replacement = jax.random.categorical(r_key, jnp.log(residual), axis=-1)
    return accepted, replacement


def _draw(key, probs):
    return jax.random.categorical(key, jnp.log(probs), axis=-1)


def _log_softmax_at(logits, token):
    return jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]


@partial(nnx.jit, static_argnames=("max_new_tokens", "top_k", "eos_id", "pad_id"))
def _generate_speculative(
    model, tokens, mask, key, temperature, top_p, *, max_new_tokens, top_k, eos_id, pad_id
):
    B, P = tokens.shape
    N = max_new_tokens
    mtp = model.mtp[0]  # the first module drafts the token after next (V3 keeps one)
    probs = partial(token_probs, temperature=temperature, top_k=top_k, top_p=top_p)
    # Two slots per pass at most, and every pass emits at least one token.
    cache = model.init_cache(B, P + 2 * N)
    mtp_cache = mtp.block.attn.init_cache(B, P + 2 * N)
    positions = _positions(mask)
    hidden, cache = model.final_hidden_cached(tokens, positions, cache, mask)
    logits = model.output_head(hidden[:, -1:])[:, 0]
    key, k_next, k_draft = jax.random.split(key, 3)
    nxt = _draw(k_next, probs(logits))  # token P, from the main model
    # The module reads h^0_j and the embedding of token j + 1, at every prompt position j.
    shifted = jnp.concatenate([tokens[:, 1:], nxt[:, None]], axis=1)
    h1, mtp_cache, _ = mtp(
        hidden, model.embed(shifted), positions, key_mask=cache.key_mask, cache=mtp_cache
    )
    q = probs(model.output_head(h1[:, -1:])[:, 0])
    state = dict(
        step=jnp.zeros((), jnp.int32),
        n_out=jnp.zeros((B,), jnp.int32),
        next=nxt,
        next_logprob=_log_softmax_at(logits, nxt),
        draft=_draw(k_draft, q),
        q=q,
        position=positions[:, -1] + 1,
        cache=cache,
        mtp_cache=mtp_cache,
        done=jnp.zeros((B,), bool),
        key=key,
        out=jnp.full((B, N + 1), pad_id, jnp.int32),
        logprobs=jnp.zeros((B, N + 1), jnp.float32),
        drafted=jnp.zeros((B, N + 1), bool),
        accepted=jnp.zeros((B, N + 1), bool),
    )
    rows = jnp.arange(B)

    def cond(s):
        return (s["step"] < N) & ~jnp.all(s["done"])

    def body(s):
        key, k_accept, k_next, k_draft = jax.random.split(s["key"], 4)
        index, done, nxt, draft = s["cache"].index, s["done"], s["next"], s["draft"]
        # Verify: the main model over [token t+1, draft t+2], at their own positions.
        pair = jnp.stack([s["position"], s["position"] + 1], axis=1)  # (B, 2)
        hidden, cache = model.final_hidden_cached(jnp.stack([nxt, draft], 1), pair, s["cache"])
        logits = model.output_head(hidden)  # (B, 2, V)
        both = probs(logits.reshape(2 * B, -1)).reshape(B, 2, -1)  # one call for the two positions
        p_after_next, p_after_draft = both[:, 0], both[:, 1]
        accepted, replacement = accept_draft(draft, p_after_next, s["q"], k_accept)
        room = s["n_out"] + 1 < N  # a draft beyond max_new_tokens is not used
        drafting = ~done & (nxt != eos_id) & room
        accepted = accepted & drafting
        new_next = jnp.where(accepted, _draw(k_next, p_after_draft), replacement)
        new_logprob = jnp.where(
            accepted,
            _log_softmax_at(logits[:, 1], new_next),
            _log_softmax_at(logits[:, 0], new_next),
        )
        # Roll back: a rejected draft's slot is masked out; if no sequence kept its draft, the
        # index steps back over the slot, which the next pass then overwrites.
        key_mask = jax.lax.dynamic_update_slice(cache.key_mask, accepted[:, None], (0, index + 1))
        cache = cache.replace(key_mask=key_mask, index=index + 1 + jnp.any(accepted))
        # Draft again: the module reads h^0 and the token after it, at the one or two new positions.
        after = jnp.stack([jnp.where(accepted, draft, new_next), new_next], axis=1)
        h1, mtp_cache, _ = mtp(
            hidden,
            model.embed(after),
            pair,
            key_mask=key_mask,
            cache=s["mtp_cache"],
            index=index,
        )
        last = jnp.where(accepted[:, None], h1[:, 1], h1[:, 0])
        q = probs(model.output_head(last[:, None])[:, 0])
        # Emit token t+1, and the draft when it was kept.
        at = jnp.where(done, N + 1, s["n_out"])  # out of range: dropped
        at2 = jnp.where(accepted, at + 1, N + 1)
        out = s["out"].at[rows, at].set(nxt, mode="drop").at[rows, at2].set(draft, mode="drop")
        logprobs = (
            s["logprobs"]
            .at[rows, at]
            .set(s["next_logprob"], mode="drop")
            .at[rows, at2]
            .set(_log_softmax_at(logits[:, 0], draft), mode="drop")
        )
        at_draft = jnp.where(drafting, at + 1, N + 1)
        n_out = s["n_out"] + jnp.where(done, 0, 1 + accepted)
        finished = (nxt == eos_id) | (accepted & (draft == eos_id)) | (n_out >= N)
        return dict(
            step=s["step"] + 1,
            n_out=n_out,
            next=new_next,
            next_logprob=new_logprob,
            draft=_draw(k_draft, q),
            q=q,
            position=s["position"] + 1 + accepted,
            cache=cache,
            mtp_cache=mtp_cache,
            done=done | finished,
            key=key,
            out=out,
            logprobs=logprobs,
            drafted=s["drafted"].at[rows, at_draft].set(True, mode="drop"),
            accepted=s["accepted"].at[rows, at2].set(True, mode="drop"),
        )

    s = jax.lax.while_loop(cond, body, state)
    return (
        s["out"][:, :N],
        s["logprobs"][:, :N],
        s["drafted"][:, :N],
        s["accepted"][:, :N],
        s["step"],
    )


def _speculative_result(result, eos_id: int, max_new_tokens: int) -> SpeculativeGeneration:
    out, logprobs, drafted, accepted, steps = (np.asarray(a) for a in result)
    is_eos = out == eos_id
    lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), max_new_tokens)
    return SpeculativeGeneration(
        tokens=out,
        lengths=lengths,
        logprobs=logprobs,
        drafted=drafted,
        accepted=accepted,
        steps=int(steps),
    )


def generate_speculative(
    model: Transformer, prompts: Sequence[Sequence[int]], **kwargs
) -> SpeculativeGeneration:
    """Self-speculative decoding with the model's MTP module (see the module docstring); same
    arguments as `generate`."""
    return generate(model, prompts, speculative=True, **kwargs)

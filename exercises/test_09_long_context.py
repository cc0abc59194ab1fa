"""Grader for exercise 09 (the lightning indexer): `pytest exercises/test_09_long_context.py`.

Each test checks one property of `index_scores`, `select_topk` or `indexer_kl` in
`exercises/09_long_context.py` and, when it fails, says what it expected and what it got. With
`MINIDS_EXERCISES=solutions` the same tests grade minids' own implementations (the answer key).
Expected numbers are worked out here in numpy, never by calling the answer key.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minids.grading import (
    check_close,
    check_finite,
    check_shape,
    explain_tracer_errors,
    fail,
    load_exercise,
)

exercise = load_exercise(
    Path(__file__).with_name("09_long_context.py"),
    solutions={
        "index_scores": "minids.dsa",
        "select_topk": "minids.dsa",
        "indexer_kl": "minids.dsa",
    },
)
index_scores, select_topk, indexer_kl = (
    exercise.index_scores,
    exercise.select_topk,
    exercise.indexer_kl,
)

SCORES, TOPK, KL = "index_scores", "select_topk", "indexer_kl"
B, T, S, N, H = 2, 4, 9, 3, 8


def randn(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def causal(T, S, offset):
    """(1, T, S): query t (at slot offset + t) sees keys s <= offset + t."""
    return (np.arange(S)[None, :] <= offset + np.arange(T)[:, None])[None]


def score_inputs(seed=0):
    return randn((B, T, N, H), seed), randn((B, T, N), seed + 1), randn((B, S, H), seed + 2)


def scores_np(q, w, k):
    dots = np.einsum("btjh,bsh->btjs", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    return np.einsum("btj,btjs->bts", w, np.maximum(dots, 0.0))


def call_scores(q, w, k, mask):
    got = index_scores(jnp.asarray(q), jnp.asarray(w), jnp.asarray(k), jnp.asarray(mask))
    check_shape(SCORES, got, (q.shape[0], q.shape[1], k.shape[1]), letters="B T S")
    return np.asarray(got, np.float64)


# ---------------------------------------------------------------------------------- index_scores


def test_scores_have_one_number_per_query_and_key():
    call_scores(*score_inputs(), causal(T, S, 5))


@pytest.mark.points(2)
def test_visible_scores_follow_eq_1():
    q, w, k = score_inputs()
    mask = np.ones((1, T, S), bool)
    check_close(
        SCORES,
        call_scores(q, w, k, mask),
        scores_np(q, w, k),
        atol=1e-4,
        what="I[t, s] with every key visible",
        hint="dots = einsum('BTNH,BSH->BTNS', q, k) / sqrt(H); I = einsum('BTN,BTNS->BTS', "
        "weights, relu(dots)).",
    )


def test_relu_comes_before_the_head_weights():
    q, _, k = score_inputs(3)
    w = -np.abs(randn((B, T, N), 4))  # negative weights: without the ReLU first, scores could rise
    got = call_scores(q, w, k, np.ones((1, T, S), bool))
    if np.any(got > 1e-6):
        fail(
            f"{SCORES}: with every head weight negative no score can be positive (ReLU(dot) >= 0), "
            f"but the largest is {got.max():.3g}"
            " Hint: "
            "apply ReLU to each head's dot product, then multiply by that head's weight.",
        )


def test_dot_products_are_scaled_by_one_over_sqrt_h():
    q, w, k = score_inputs(5)
    w = np.abs(w)
    got = call_scores(q, w, k, np.ones((1, T, S), bool))
    twice = call_scores(q, w, 2 * k, np.ones((1, T, S), bool))
    check_close(SCORES, twice, 2 * got, atol=1e-4, what="scores with the keys doubled")
    check_close(
        SCORES,
        got,
        scores_np(q, w, k),
        atol=1e-4,
        what="scores with positive weights",
        hint="divide each dot product by sqrt(H), the indexer's head width.",
    )


def test_hidden_keys_score_masked():
    q, w, k = score_inputs(6)
    mask = causal(T, S, 4)
    got = call_scores(q, w, k, mask)
    hidden = np.broadcast_to(~mask, got.shape)
    if not np.all(got[hidden] <= -1e20):
        fail(
            f"{SCORES}: keys the mask hides should score MASKED (-1e30); the largest hidden score "
            f"is {got[hidden].max():.3g}"
            " Hint: "
            "jnp.where(mask, scores, MASKED).",
        )
    check_close(
        SCORES, got[~hidden], scores_np(q, w, k)[~hidden], atol=1e-4, what="the visible scores"
    )


def test_index_scores_work_under_jit():
    q, w, k = score_inputs(7)
    mask = causal(T, S, 5)
    with explain_tracer_errors(SCORES, "jax.jit"):
        got = jax.jit(index_scores)(*(jnp.asarray(a) for a in (q, w, k, mask)))
    check_close(SCORES, np.where(mask, got, 0), np.where(mask, scores_np(q, w, k), 0), atol=1e-4)


# ----------------------------------------------------------------------------------- select_topk


def topk_inputs(seed=0, offset=3):
    mask = causal(T, S, offset)
    scores = np.where(mask, randn((B, T, S), seed), -1e30).astype(np.float32)
    return scores, mask


def call_topk(scores, mask, k):
    result = select_topk(jnp.asarray(scores), jnp.asarray(mask), k)
    if not isinstance(result, tuple | list) or len(result) != 2:
        fail(f"{TOPK} should return a pair (indices, valid), got {type(result).__name__}")
    idx, valid = (np.asarray(a) for a in result)
    K = min(k, scores.shape[-1])
    check_shape(TOPK, idx, (scores.shape[0], scores.shape[1], K), letters="B T K")
    check_shape(TOPK, valid, (scores.shape[0], scores.shape[1], K), letters="B T K")
    return idx, valid


def test_topk_returns_k_indices_and_flags():
    call_topk(*topk_inputs(), 3)


@pytest.mark.points(2)
def test_topk_keeps_the_best_visible_keys():
    scores, mask = topk_inputs(1, offset=6)
    idx, _ = call_topk(scores, mask, 3)
    for b in range(B):
        for t in range(T):
            want = set(np.argsort(-scores[b, t])[:3].tolist())
            if set(idx[b, t].tolist()) != want:
                fail(
                    f"{TOPK}: query ({b}, {t}) should keep keys {sorted(want)} (its 3 best scores), "
                    f"got {sorted(idx[b, t].tolist())}"
                    " Hint: "
                    "jax.lax.top_k(scores, k) returns (values, indices) along the last axis.",
                )


def test_valid_marks_the_visible_choices():
    scores, mask = topk_inputs(2, offset=0)  # query 0 sees one key, query 3 sees four
    idx, valid = call_topk(scores, mask, 3)
    want = np.take_along_axis(np.broadcast_to(mask, scores.shape), idx, axis=-1)
    if not np.array_equal(valid, want):
        fail(
            f"{TOPK}: valid should be True exactly where the chosen key is visible; for query 0 "
            f"(which sees 1 key) expected {want[0, 0].tolist()}, got {valid[0, 0].tolist()}"
            " Hint: "
            "read the mask at the chosen indices: jnp.take_along_axis(mask, idx, axis=-1) "
            "(broadcast the mask to the scores' shape first).",
        )


def test_a_visible_key_always_beats_a_hidden_one():
    scores, mask = topk_inputs(3, offset=2)
    idx, valid = call_topk(scores, mask, 4)
    visible = np.broadcast_to(mask, scores.shape).sum(-1)
    if not np.array_equal(valid.sum(-1), np.minimum(visible, 4)):
        fail(
            f"{TOPK}: each query should read min(visible keys, k) keys; expected "
            f"{np.minimum(visible, 4)[0].tolist()}, got {valid.sum(-1)[0].tolist()}",
        )


def test_k_larger_than_the_keys_gives_every_key():
    scores, mask = topk_inputs(4, offset=S)
    idx, valid = call_topk(scores, mask, 50)
    if not (
        np.array_equal(np.sort(idx, -1), np.broadcast_to(np.arange(S), idx.shape)) and valid.all()
    ):
        fail(f"{TOPK}: with k = 50 > S = {S}, every key should be chosen once, and all valid")


# ------------------------------------------------------------------------------------ indexer_kl


def kl_inputs(seed=0):
    mask = np.broadcast_to(causal(T, S, 3), (B, T, S)).copy()
    mask[1, :, :2] = False  # left padding in the second sequence
    logits = randn((B, T, S), seed + 1)
    target = np.where(mask, np.exp(randn((B, T, S), seed)), 0.0)
    target = target / target.sum(-1, keepdims=True)
    return target.astype(np.float32), logits, mask


def kl_np(target, scores, mask):
    s = np.where(mask, scores.astype(np.float64), -np.inf)
    # A fully masked row (left padding) has no distribution: its NaNs are left out below.
    with np.errstate(invalid="ignore"):
        log_q = (
            s
            - np.log(np.sum(np.exp(s - s.max(-1, keepdims=True)), -1, keepdims=True))
            - s.max(-1, keepdims=True)
        )
        terms = np.where(target > 0, target * (np.log(np.where(target > 0, target, 1)) - log_q), 0)
    per_query = terms.sum(-1)
    rows = mask.any(-1)
    return per_query[rows].mean()


def call_kl(target, scores, mask):
    got = indexer_kl(jnp.asarray(target), jnp.asarray(scores), jnp.asarray(mask))
    check_shape(KL, got, (), letters="(a scalar)")
    check_finite(KL, got)
    return float(got)


def test_kl_is_a_finite_scalar():
    call_kl(*kl_inputs())


@pytest.mark.points(2)
def test_kl_is_the_mean_over_queries_of_eq_3():
    target, scores, mask = kl_inputs(1)
    got = call_kl(target, scores, mask)
    want = kl_np(target, scores, mask)
    if abs(got - want) > 1e-4:
        fail(
            f"{KL}: expected {want:.6f}, got {got:.6f}"
            " Hint: "
            "log q = log_softmax(where(valid, scores, MASKED)); KL per query = sum over keys "
            "of p * (log p - log q); then the mean over the queries.",
        )


def test_kl_is_zero_when_the_indexer_matches():
    target, _, mask = kl_inputs(2)
    scores = np.log(np.where(mask, target, 1.0)) + 3.0  # softmax over the valid keys = target
    got = call_kl(target, scores.astype(np.float32), mask)
    if abs(got) > 1e-5:
        fail(f"{KL}: when softmax(scores) equals the target the KL is 0, got {got:.3g}")


def test_kl_ignores_the_scores_of_invalid_keys():
    target, scores, mask = kl_inputs(3)
    changed = np.where(mask, scores, 1e4).astype(np.float32)
    a, b = call_kl(target, scores, mask), call_kl(target, changed, mask)
    if abs(a - b) > 1e-5:
        fail(
            f"{KL}: scores of invalid keys must not matter, but raising them changed the KL from "
            f"{a:.5f} to {b:.5f}"
            " Hint: "
            "take the softmax over the valid keys only: set the others to MASKED first.",
        )


def test_kl_gradient_is_softmax_minus_target():
    target, scores, mask = kl_inputs(4)
    with explain_tracer_errors(KL, "jax.grad"):
        grad = jax.grad(indexer_kl, argnums=1)(*(jnp.asarray(a) for a in (target, scores, mask)))
    s = np.where(mask, scores.astype(np.float64), -np.inf)
    q = np.exp(s - s.max(-1, keepdims=True))
    q = q / q.sum(-1, keepdims=True)
    rows = mask.any(-1).sum()
    check_close(
        KL,
        np.asarray(grad),
        np.where(mask, q - target, 0) / rows,
        atol=1e-5,
        what="d KL / d scores",
        hint="differentiable end to end: jnp only, and a mean over the queries.",
    )


def test_padding_queries_count_for_nothing():
    target, scores, mask = kl_inputs(5)
    mask[0, 0] = False  # the first query of the first sequence sees nothing
    target[0, 0] = 0.0
    got = call_kl(target, scores, mask)
    want = kl_np(target, scores, mask)
    if abs(got - want) > 1e-4:
        fail(
            f"{KL}: a query with no valid key must be left out of the mean: expected {want:.6f}, "
            f"got {got:.6f}"
        )

"""Grader for exercise 07 (multi-token prediction): `pytest exercises/test_07_mtp.py`.

Each test checks one property of your `mtp_targets` or `accept_draft` in `exercises/07_mtp.py` and,
when it fails, says what it expected and what it got. With `MINIDS_EXERCISES=solutions` the same
tests grade minids' own implementations (the answer key).

The expected numbers are worked out here with a few lines of numpy, never by calling the answer key.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minids.grading import (
    check_close,
    check_dtype,
    check_shape,
    explain_tracer_errors,
    fail,
    load_exercise,
)

exercise = load_exercise(
    Path(__file__).with_name("07_mtp.py"),
    solutions={"mtp_targets": "minids.mtp", "accept_draft": "minids.generate"},
)
mtp_targets = exercise.mtp_targets
accept_draft = exercise.accept_draft

TARGETS, ACCEPT = "mtp_targets", "accept_draft"
P = np.array([0.5, 0.2, 0.2, 0.1, 0.0], np.float32)
Q = np.array([0.1, 0.1, 0.3, 0.2, 0.3], np.float32)
N = 20_000  # rows of every statistical check (one shape: the checks share JAX's compilations)


def call_targets(targets, mask, k):
    result = mtp_targets(jnp.asarray(targets, jnp.int32), jnp.asarray(mask, jnp.float32), k)
    if not isinstance(result, tuple | list) or len(result) != 2:
        fail(f"{TARGETS} should return a pair (targets_k, mask_k), got {type(result).__name__}")
    got_t, got_m = result
    check_shape(TARGETS, got_t, np.shape(targets), letters="B T")
    check_shape(TARGETS, got_m, np.shape(mask), letters="B T")
    return np.asarray(got_t), np.asarray(got_m, np.float64)


def call_accept(draft, p, q, seed=0):
    result = accept_draft(
        jnp.asarray(draft, jnp.int32), jnp.asarray(p), jnp.asarray(q), jax.random.key(seed)
    )
    if not isinstance(result, tuple | list) or len(result) != 2:
        fail(f"{ACCEPT} should return a pair (accepted, replacement), got {type(result).__name__}")
    accepted, replacement = result
    check_shape(ACCEPT, accepted, np.shape(draft), letters="B")
    check_shape(ACCEPT, replacement, np.shape(draft), letters="B")
    return np.asarray(accepted), np.asarray(replacement)


def rows(n, dist=Q, seed=1):
    """n drafts drawn from `dist`, with p and q broadcast to (n, V)."""
    draft = np.random.default_rng(seed).choice(len(dist), size=n, p=dist / dist.sum())
    return draft, np.broadcast_to(P, (n, P.size)), np.broadcast_to(Q, (n, Q.size))


# ----------------------------------------------------------------------------------------------
# mtp_targets
# ----------------------------------------------------------------------------------------------


def test_targets_keep_shapes_and_dtypes():
    targets = np.arange(8).reshape(2, 4)
    got_t, got_m = mtp_targets(jnp.asarray(targets, jnp.int32), jnp.ones((2, 4)), 1)
    check_dtype(TARGETS, got_t, np.int32, hint="targets_k keeps the integer dtype of targets.")
    check_dtype(TARGETS, got_m, np.float32, hint="mask_k keeps the float dtype of loss_mask.")


def test_targets_worked_example():
    got_t, got_m = call_targets([[10, 11, 12, 13]], [[0.0, 1.0, 1.0, 1.0]], 2)
    if got_t.tolist() != [[12, 13, 0, 0]]:
        fail(
            f"{TARGETS}: k=2 on targets [10, 11, 12, 13] should give [12, 13, 0, 0], got "
            f"{got_t.tolist()[0]}. Module k at position i predicts targets[i + k]."
        )
    check_close(TARGETS, got_m, [[1.0, 1.0, 0.0, 0.0]], what="mask_k for k=2")


def test_depth_zero_is_the_main_models_own():
    targets, mask = [[4, 5, 6]], [[0.0, 1.0, 1.0]]
    got_t, got_m = call_targets(targets, mask, 0)
    if got_t.tolist() != targets:
        fail(f"{TARGETS}: k=0 should return targets unchanged, got {got_t.tolist()}")
    check_close(TARGETS, got_m, mask, what="mask_k for k=0")


def test_the_last_k_positions_are_masked_out():
    _, got_m = call_targets(np.ones((1, 6), int), np.ones((1, 6)), 3)
    check_close(
        TARGETS,
        got_m,
        [[1, 1, 1, 0, 0, 0]],
        what="mask_k for k=3 with every main target graded",
        hint="the last k positions have no token k further on: their mask is 0.",
    )


def test_targets_of_a_batch_with_different_masks():
    targets = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    mask = [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    got_t, got_m = call_targets(targets, mask, 1)
    if got_t.tolist() != [[2, 3, 4, 5, 0], [7, 8, 9, 10, 0]]:
        fail(f"{TARGETS}: k=1, expected [[2, 3, 4, 5, 0], [7, 8, 9, 10, 0]], got {got_t.tolist()}")
    check_close(TARGETS, got_m, [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], what="mask_k, row by row")


def test_targets_work_under_jit():
    targets, mask = jnp.asarray([[10, 11, 12, 13]], jnp.int32), jnp.asarray([[0.0, 1, 1, 1]])
    with explain_tracer_errors(TARGETS, "jax.jit"):
        got_t, _ = jax.jit(mtp_targets, static_argnums=2)(targets, mask, 2)
    if np.asarray(got_t).tolist() != [[12, 13, 0, 0]]:
        fail(
            f"{TARGETS} under jax.jit: expected [[12, 13, 0, 0]], got {np.asarray(got_t).tolist()}"
        )


# ----------------------------------------------------------------------------------------------
# accept_draft
# ----------------------------------------------------------------------------------------------


def test_accept_returns_bools_and_token_ids():
    accepted, replacement = call_accept(*rows(N))
    if accepted.dtype != np.bool_:
        fail(f"{ACCEPT}: accepted should be booleans, got dtype {accepted.dtype}")
    if replacement.dtype.kind not in "iu" or replacement.min() < 0 or replacement.max() >= P.size:
        fail(f"{ACCEPT}: replacement should be token ids in [0, {P.size}), got {replacement}")


def test_a_draft_the_main_model_likes_more_is_always_kept():
    draft = np.zeros(N, int)  # token 0: p = 0.5 >= q = 0.1
    accepted, _ = call_accept(draft, *rows(N)[1:])
    if not accepted.all():
        fail(
            f"{ACCEPT}: token 0 has p = 0.5 >= q = 0.1, so min(1, p/q) = 1 and it must always be "
            f"kept; {int((~accepted).sum())} of {N} were rejected."
        )


def test_a_draft_the_main_model_never_picks_is_never_kept():
    draft = np.full(N, 4)  # token 4: p = 0
    accepted, _ = call_accept(draft, *rows(N)[1:])
    if accepted.any():
        fail(f"{ACCEPT}: token 4 has p = 0, it must never be kept; {int(accepted.sum())} were.")


def test_greedy_is_the_one_hot_case():
    p = np.eye(5, dtype=np.float32)[[1, 1, 3, 0]]
    q = np.eye(5, dtype=np.float32)[[1, 2, 3, 4]]
    accepted, replacement = call_accept(np.array([1, 2, 3, 4]), p, q)
    if accepted.tolist() != [True, False, True, False]:
        fail(
            f"{ACCEPT}: with one-hot p and q a draft is kept exactly when it is p's argmax: "
            f"expected [True, False, True, False], got {accepted.tolist()}"
        )
    if replacement[[1, 3]].tolist() != [1, 0]:
        fail(
            f"{ACCEPT}: a rejected greedy draft is replaced by p's argmax: expected [1, 0] for "
            f"rows 1 and 3, got {replacement[[1, 3]].tolist()}"
        )


def test_the_replacement_is_never_a_token_q_already_covers():
    _, replacement = call_accept(*rows(N))
    allowed = np.flatnonzero(P > Q)
    wrong = sorted(set(replacement.tolist()) - set(allowed.tolist()))
    if wrong:
        fail(
            f"{ACCEPT}: replacements are drawn from max(0, p - q), which is 0 except at tokens "
            f"{allowed.tolist()}; got tokens {wrong}."
        )


@pytest.mark.points(2)
def test_drafts_are_kept_at_the_rate_sum_of_min_p_q():
    accepted, _ = call_accept(*rows(N))
    want = float(np.minimum(P, Q).sum())  # 0.5
    if abs(accepted.mean() - want) > 0.015:
        fail(
            f"{ACCEPT}: drafts drawn from q should be kept with probability sum_x min(p, q) = "
            f"{want:.2f}, got a rate of {accepted.mean():.3f}. Keep d when u < p(d) / q(d)."
        )


@pytest.mark.points(2)
def test_the_final_token_is_distributed_as_p():
    draft, p, q = rows(N)
    accepted, replacement = call_accept(draft, p, q, seed=3)
    token = np.where(accepted, draft, replacement)
    counts = np.bincount(token, minlength=P.size)
    expected = token.size * P[:4]
    chi2 = float(np.sum((counts[:4] - expected) ** 2 / expected))
    if counts[4] or chi2 > 16.3:  # 3 degrees of freedom, p = 0.001
        fail(
            f"{ACCEPT}: the final tokens (draft if kept, else the replacement) should follow p = "
            f"{P.tolist()}; got frequencies {np.round(counts / token.size, 3).tolist()} "
            f"(chi-square {chi2:.1f} on 3 degrees of freedom)."
        )


def test_p_equal_to_q_gives_a_valid_replacement():
    p = np.broadcast_to(P, (N, 5))
    draft = np.random.default_rng(2).choice(4, size=N, p=P[:4] / P[:4].sum())
    accepted, replacement = call_accept(draft, p, p)
    if not accepted.all():
        fail(
            f"{ACCEPT}: with p == q every draft is kept (p/q = 1); {int((~accepted).sum())} were not"
        )
    if replacement.min() < 0 or replacement.max() >= 5:
        fail(f"{ACCEPT}: with p == q the replacement must still be a token id, got {replacement}")


def test_accept_works_under_jit():
    draft, p, q = rows(8)
    with explain_tracer_errors(ACCEPT, "jax.jit"):
        accepted, _ = jax.jit(accept_draft)(
            jnp.asarray(draft, jnp.int32), jnp.asarray(p), jnp.asarray(q), jax.random.key(0)
        )
    if np.asarray(accepted).shape != (8,):
        fail(f"{ACCEPT} under jax.jit: expected 8 decisions, got shape {np.shape(accepted)}")

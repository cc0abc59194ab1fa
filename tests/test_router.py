"""The router's group ranking and gate normalisation, on examples small enough to check by hand.

Group-limited routing keeps a token's experts inside its best `groups_per_token` groups. The two
DeepSeek papers rank the groups differently:

- V2 (arXiv 2405.04434, §2.2.2, device-limited routing; transformers' `group_limited_greedy`):
  a group's score is the highest affinity in it. minids uses this rule when the config has no
  aux-free bias.
- V3 (arXiv 2412.19437, §2.1.2 and its released code, `noaux_tc`): a group's score is the sum of its
  two highest biased affinities s + b. minids uses this rule with the aux-free bias.

The example below is built so that the two rules keep different groups, so each test fails under the
other rule. Gate normalisation (V3 eq. 13) is checked for both gates with `norm_topk_prob` set,
unset, and left to its default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minids.config import MoEConfig
from minids.moe import router_scores, select_experts

# One token, 6 experts in 2 groups of 3, one group kept, 2 experts chosen.
#   group 0: [0.90, 0.10, 0.05]  best 0.90 (wins by the max)     top-2 sum 1.00
#   group 1: [0.60, 0.50, 0.02]  best 0.60                       top-2 sum 1.10 (wins by the sum)
SCORES = jnp.array([[0.90, 0.10, 0.05, 0.60, 0.50, 0.02]], jnp.float32)
NO_BIAS = jnp.zeros((6,), jnp.float32)
GROUPS = dict(
    n_routed_experts=6, experts_per_token=2, n_groups=2, groups_per_token=1, n_dense_layers=0
)


def _chosen(scores, bias, cfg) -> set[int]:
    indices, _ = select_experts(scores, bias, cfg)
    return set(np.asarray(indices[0]).tolist())


def test_the_example_separates_the_two_rules():
    grouped = np.asarray(SCORES).reshape(2, 3)
    by_max = grouped.max(axis=1)
    by_top2 = np.sort(grouped, axis=1)[:, -2:].sum(axis=1)
    assert by_max.argmax() == 0 and by_top2.argmax() == 1


@pytest.mark.parametrize("balancing", ["aux_loss", "seq_aux_loss", "none"])
def test_without_the_bias_groups_are_ranked_by_their_best_affinity(balancing):
    """V2's group_limited_greedy: group 0 holds the single best expert, so it is kept."""
    cfg = MoEConfig(**GROUPS, gate="softmax", balancing=balancing)
    assert not cfg.uses_bias
    assert _chosen(SCORES, NO_BIAS, cfg) == {0, 1}  # the top-2-sum rule would give {3, 4}


@pytest.mark.parametrize("balancing", ["aux_free", "aux_free+seq_aux_loss"])
def test_with_the_aux_free_bias_groups_are_ranked_by_their_top_two_sum(balancing):
    """V3's noaux_tc: group 1's two good experts outweigh group 0's one excellent expert."""
    cfg = MoEConfig(**GROUPS, gate="sigmoid", balancing=balancing)
    assert cfg.uses_bias
    assert _chosen(SCORES, NO_BIAS, cfg) == {3, 4}  # the max rule would give {0, 1}


def test_the_bias_enters_the_group_ranking_but_not_the_gates():
    """V3 eq. 16: the bias decides groups and experts; the gates still come from the unbiased s."""
    cfg = MoEConfig(**GROUPS, gate="sigmoid", balancing="aux_free", norm_topk_prob=False)
    # a bias on expert 1 lifts group 0's top-2 sum from 1.00 to 1.30, above group 1's 1.10
    bias = jnp.array([0.0, 0.3, 0.0, 0.0, 0.0, 0.0], jnp.float32)
    indices, gates = select_experts(SCORES, bias, cfg)
    assert set(np.asarray(indices[0]).tolist()) == {0, 1}
    np.testing.assert_allclose(gates[0], SCORES[0, indices[0]], rtol=1e-6)


def test_groups_of_one_expert_rank_by_that_expert():
    """With one expert per group, both rules reduce to the expert's own (biased) score."""
    cfg = MoEConfig(
        n_routed_experts=6,
        experts_per_token=2,
        n_groups=6,
        groups_per_token=2,
        balancing="aux_free",
    )
    assert _chosen(SCORES, NO_BIAS, cfg) == {0, 3}


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("norm", [True, False, None])
def test_norm_topk_prob_renormalises_the_k_gates_or_not(gate, norm):
    E, K, scale = 8, 3, 2.5
    logits = jax.random.normal(jax.random.key(0), (5, E)) * 2.0
    scores = router_scores(logits, gate)
    cfg = MoEConfig(
        n_routed_experts=E,
        experts_per_token=K,
        gate=gate,
        norm_topk_prob=norm,
        route_scale=scale,
        balancing="none",
        n_dense_layers=0,
    )
    renormalises = (gate == "sigmoid") if norm is None else norm  # None: V3 yes, V2 no
    assert cfg.renormalizes == renormalises
    indices, gates = select_experts(scores, jnp.zeros((E,), jnp.float32), cfg)
    chosen = np.take_along_axis(np.asarray(scores), np.asarray(indices), axis=-1)
    want = chosen / chosen.sum(axis=-1, keepdims=True) if renormalises else chosen
    np.testing.assert_allclose(gates, scale * want, rtol=1e-6)
    if renormalises:
        np.testing.assert_allclose(np.asarray(gates).sum(axis=-1), scale, rtol=1e-6)
    else:  # the K gates keep the scores' own size: below the scale for softmax's, not one
        assert np.all(np.abs(np.asarray(gates).sum(axis=-1) - scale) > 1e-3)

"""GRPO: the objective (minids.grpo) and its variants against hand-computed values, and the
trainer (minids.grpo_trainer) end to end.

Every expected number below is worked out by hand in a comment, never by calling minids, so a test
reads as the specification of its formula.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minids.checkpoint import read_meta
from minids.data import CharTokenizer
from minids.grpo import aggregate, clipped_surrogate, group_advantages, grpo_loss, k3_kl
from minids.grpo_trainer import (
    GRPOConfig,
    completion_mask,
    grpo_step,
    make_grpo_optimizer,
    sample_groups,
    score_completions,
    train_grpo,
)
from minids.model import Transformer

# Four completions in two groups of G = 2, three token slots each; lengths 2, 1, 3, 2.
PER_TOKEN = jnp.asarray([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0], [1.0, 1.0, 1.0], [2.0, 4.0, 9.0]])
MASK = jnp.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], bool)
# Masked row sums: 3, 3, 3, 6; token counts 2, 1, 3, 2 (the 9s are padding).
EXPECTED = {
    "grpo": (3 / 2 + 3 / 1 + 3 / 3 + 6 / 2) / 4,  # mean over completions of each one's token mean
    "bnpo": (3 + 3 + 3 + 6) / (2 + 1 + 3 + 2),  # one token mean over the batch
    "dapo": ((3 + 3) / (2 + 1) + (3 + 6) / (3 + 2)) / 2,  # token mean per group, then over groups
    "dr_grpo": (3 + 3 + 3 + 6) / (4 * 3),  # a constant: completions x max_new_tokens (3)
}


@pytest.mark.parametrize("loss_type", sorted(EXPECTED))
def test_each_loss_type_averages_as_its_formula_says(loss_type):
    got = float(aggregate(PER_TOKEN, MASK, loss_type, group_size=2))
    assert got == pytest.approx(EXPECTED[loss_type], abs=1e-6)


def test_the_four_loss_types_really_differ():
    assert len({round(v, 6) for v in EXPECTED.values()}) == 4


@pytest.mark.parametrize("loss_type", sorted(EXPECTED))
def test_grpo_loss_is_minus_the_aggregated_advantage_when_ratios_are_one(loss_type):
    # rho = 1 everywhere, so each token's term is A_i; the loss is -aggregate(A_i on its tokens).
    adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
    cfg = GRPOConfig(group_size=2, loss_type=loss_type)
    zeros = jnp.zeros((4, 3))
    loss, metrics = grpo_loss(zeros, zeros, adv, MASK, cfg)
    # grpo: (1 - 1 + 0.5 - 0.5) / 4 = 0;  bnpo: (2 - 1 + 1.5 - 1) / 8 = 0.1875;
    # dapo: ((2 - 1) / 3 + (1.5 - 1) / 5) / 2 = (1/3 + 0.1) / 2;  dr_grpo: 1.5 / 12 = 0.125.
    want = {"grpo": 0.0, "bnpo": 0.1875, "dapo": (1 / 3 + 0.1) / 2, "dr_grpo": 0.125}[loss_type]
    assert float(loss) == pytest.approx(-want, abs=1e-6)
    assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["clip_frac"]) == 0.0


def test_clipped_surrogate_by_hand_inside_and_outside_the_clip_range():
    # ratios 1.5, 0.5, 1.1 against eps 0.2: min(rho A, clip(rho) A)
    logp = jnp.log(jnp.asarray([[1.5, 0.5, 1.1]] * 2))
    old = jnp.zeros((2, 3))
    mask = jnp.ones((2, 3), bool)
    got = clipped_surrogate(logp, old, jnp.asarray([1.0, -1.0]), mask, 0.2, 0.2)
    # A = +1: min(1.5, 1.2) = 1.2 | min(0.5, 0.8) = 0.5 | 1.1.   A = -1: -1.5 | -0.8 | -1.1
    np.testing.assert_allclose(np.asarray(got), [[1.2, 0.5, 1.1], [-1.5, -0.8, -1.1]], atol=1e-6)
    # Clip-higher (eps_high 0.6): the positive advantage may now grow to 1.5.
    got = clipped_surrogate(logp, old, jnp.asarray([1.0, -1.0]), mask, 0.2, 0.6)
    np.testing.assert_allclose(np.asarray(got)[0], [1.5, 0.5, 1.1], atol=1e-6)


def test_clip_fraction_counts_the_tokens_where_the_clip_is_active():
    logp = jnp.log(jnp.asarray([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]]))
    cfg = GRPOConfig(group_size=2)
    _, metrics = grpo_loss(
        logp, jnp.zeros((2, 3)), jnp.asarray([1.0, -1.0]), jnp.ones((2, 3), bool), cfg
    )
    # A > 0 clips at rho 1.5; A < 0 clips at rho 0.5: 2 of 6 tokens.
    assert float(metrics["clip_frac"]) == pytest.approx(2 / 6)


def test_sequence_level_ratio_is_the_geometric_mean_of_the_token_ratios():
    # token ratios 2 and 1/2 (and padding): geometric mean 1, so the sequence ratio is 1 and with
    # A = 1 every token's term is 1 (the token-level loss would clip the 2 to 1.2 instead).
    logp = jnp.log(jnp.asarray([[2.0, 0.5, 7.0], [1.0, 1.0, 1.0]]))
    mask = jnp.asarray([[1, 1, 0], [1, 1, 1]], bool)
    adv = jnp.asarray([1.0, 0.0])
    seq, _ = grpo_loss(
        logp, jnp.zeros((2, 3)), adv, mask, GRPOConfig(group_size=2, ratio_level="sequence")
    )
    tok, _ = grpo_loss(logp, jnp.zeros((2, 3)), adv, mask, GRPOConfig(group_size=2))
    assert float(seq) == pytest.approx(-(1.0 + 0.0) / 2, abs=1e-6)
    assert float(tok) == pytest.approx(-((1.2 + 0.5) / 2 + 0.0) / 2, abs=1e-6)


def test_group_advantages_by_hand():
    rewards = jnp.asarray([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    # row 0: mean 0.5, std 0.5 -> +-1. row 1: all equal -> 0. row 2: mean 0.75, std sqrt(27/16).
    s2 = math.sqrt(27 / 16)
    want = [[1, -1, -1, 1], [0, 0, 0, 0], [-0.75 / s2, -0.75 / s2, -0.75 / s2, 2.25 / s2]]
    np.testing.assert_allclose(np.asarray(group_advantages(rewards, "group", 0.0)), want, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(group_advantages(rewards, "none")),
        [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.75, -0.75, -0.75, 2.25]],
        atol=1e-6,
    )
    batch_std = float(np.std(np.asarray(rewards)))
    np.testing.assert_allclose(
        np.asarray(group_advantages(rewards, "batch", 0.0))[0],
        np.asarray([0.5, -0.5, -0.5, 0.5]) / batch_std,
        atol=1e-6,
    )


def test_equal_rewards_give_zero_advantage_and_zero_policy_gradient():
    adv = group_advantages(jnp.asarray([[0.7, 0.7, 0.7], [1.0, 1.0, 1.0]]), "group", 1e-4)
    assert np.all(np.asarray(adv) == 0.0)
    logp = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32) - 2.0
    old = logp + 0.3  # ratios far from 1: still no gradient without an advantage
    mask = jnp.ones((6, 4), bool)
    for loss_type in sorted(EXPECTED):
        cfg = GRPOConfig(group_size=3, loss_type=loss_type, mu=2)
        grad = jax.grad(lambda lp, cfg=cfg: grpo_loss(lp, old, adv.reshape(-1), mask, cfg)[0])(logp)
        assert np.all(np.asarray(grad) == 0.0), loss_type


@given(
    st.lists(st.floats(-20, 0), min_size=6, max_size=6),
    st.lists(st.floats(-20, 0), min_size=6, max_size=6),
)
def test_k3_kl_is_non_negative_and_zero_when_the_policies_agree(a, b):
    logp, ref = jnp.asarray([a]), jnp.asarray([b])
    mask = jnp.ones((1, 6), bool)
    assert np.all(np.asarray(k3_kl(logp, ref, mask)) >= 0.0)
    assert np.all(np.asarray(k3_kl(logp, logp, mask)) == 0.0)


def test_k3_kl_by_hand():
    # d = log pi_ref - log pi = log 2: e^d - d - 1 = 1 - log 2; d = -log 2: 0.5 + log 2 - 1.
    got = k3_kl(
        jnp.asarray([[0.0, 0.0]]), jnp.log(jnp.asarray([[2.0, 0.5]])), jnp.ones((1, 2), bool)
    )
    np.testing.assert_allclose(np.asarray(got), [[1 - math.log(2), math.log(2) - 0.5]], atol=1e-6)


def test_padding_after_eos_contributes_nothing_to_loss_or_gradient():
    rng = np.random.default_rng(1)
    logp = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    old, ref = logp - 0.1, logp + 0.2
    adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
    junk = jnp.where(MASK, logp, 80.0)  # huge values in the padding: exp would overflow
    for loss_type in sorted(EXPECTED):
        cfg = GRPOConfig(group_size=2, loss_type=loss_type, beta=0.1, mu=2)

        def loss(lp, cfg=cfg):
            return grpo_loss(lp, old, adv, MASK, cfg, ref)[0]

        assert float(loss(junk)) == pytest.approx(float(loss(logp)), abs=1e-6)
        g = np.asarray(jax.grad(loss)(junk))
        assert np.all(np.isfinite(g)) and np.all(g[~np.asarray(MASK)] == 0.0), loss_type


def test_completion_mask_ends_at_eos_inclusive():
    E = CharTokenizer.EOS
    tokens = np.asarray([[5, 6, E, 0, 0], [E, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(
        completion_mask(tokens), [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    )


def test_dropping_equal_groups_removes_them_from_the_average():
    # Group 1 (rows 2, 3) dropped: only rows 0 and 1 count, as if the batch had one group.
    kept = MASK.at[2:].set(False)
    for loss_type in sorted(EXPECTED):
        got = float(aggregate(PER_TOKEN, kept, loss_type, group_size=2))
        alone = float(aggregate(PER_TOKEN[:2], MASK[:2], loss_type, group_size=2))
        assert got == pytest.approx(alone, abs=1e-6), loss_type


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("group_size", 1),
        ("epsilon_low", 0.0),
        ("epsilon_high", -0.1),
        ("loss_type", "ppo"),
        ("scale_rewards", "mean"),
        ("ratio_level", "word"),
        ("mu", 0),
        ("beta", -1.0),
        ("lr", 0.0),
        ("rewards", ("accuracy", "nope")),
        ("reward_weights", (1.0,)),
        ("temperature", 0.0),
        ("template", "chatml"),
        ("drop_equal_groups", 1),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GRPOConfig(**{field: value})


# -------------------------------------------------------------------------- with a real model


TASK_ROWS = [
    {"task": "add", "prompt": f"{a}+{b}=", "answer": str(a + b)}
    for a in range(10, 16)
    for b in (20, 31)
]


@pytest.fixture(scope="module")
def small_cfg(cfg):
    return cfg.replace(max_seq_len=32)


def _batch(model, cfg, key=0):
    roll = sample_groups(model, TASK_ROWS[:2], cfg, jax.random.key(key))
    adv = group_advantages(jnp.asarray(roll.rewards.reshape(-1, cfg.group_size)), "group").reshape(
        -1
    )
    return roll, {
        "prompt_tokens": jnp.asarray(roll.prompt_tokens),
        "prompt_mask": jnp.asarray(roll.prompt_mask),
        "tokens": jnp.asarray(roll.tokens),
        "mask": jnp.asarray(roll.mask),
        "advantages": adv,
        "temperature": jnp.float32(cfg.temperature),
    }


def test_rollouts_carry_sampling_logprobs_and_a_mask_that_ends_at_eos(small_cfg):
    model = Transformer(small_cfg)
    cfg = GRPOConfig(
        group_size=4,
        max_new_tokens=6,
        template="plain",
        rewards=("plain_accuracy",),
        reward_weights=(1.0,),
    )
    roll, batch = _batch(model, cfg)
    assert (
        roll.tokens.shape == (8, 6) and roll.logprobs.shape == (8, 6) and roll.rewards.shape == (8,)
    )
    np.testing.assert_array_equal(roll.mask, completion_mask(roll.tokens))
    rescored = score_completions(
        model, batch["prompt_tokens"], batch["prompt_mask"], batch["tokens"], 1.0
    )
    np.testing.assert_allclose(
        np.where(roll.mask, np.asarray(rescored), 0),
        np.where(roll.mask, roll.logprobs, 0),
        atol=1e-4,
    )
    assert all(r["prompt"] == TASK_ROWS[i // 4]["prompt"] for i, r in enumerate(roll.examples))


def test_one_inner_update_has_ratio_exactly_one_and_nothing_clipped(small_cfg):
    model = Transformer(small_cfg)
    cfg = GRPOConfig(
        group_size=4, max_new_tokens=6, template="plain", rewards=("length",), reward_weights=(1.0,)
    )
    _, batch = _batch(model, cfg)
    batch["advantages"] = jnp.asarray([1.0, -1.0] * 4)  # a non-zero update whatever the rewards
    metrics = grpo_step(model, make_grpo_optimizer(model, cfg), batch, cfg)
    assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["clip_frac"]) == 0.0
    assert float(metrics["grad_norm"]) > 0.0


def test_zero_advantages_leave_the_model_unchanged(small_cfg):
    model = Transformer(small_cfg)
    cfg = GRPOConfig(
        group_size=4, max_new_tokens=6, template="plain", rewards=("length",), reward_weights=(1.0,)
    )
    _, batch = _batch(model, cfg)
    batch["advantages"] = jnp.zeros(8)
    params = [np.asarray(x) for x in jax.tree.leaves(nnx_params(model))]
    metrics = grpo_step(model, make_grpo_optimizer(model, cfg), batch, cfg)
    assert float(metrics["grad_norm"]) == 0.0
    for a, b in zip(params, jax.tree.leaves(nnx_params(model)), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def nnx_params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def test_trainer_logs_every_metric_and_raises_a_toy_reward(small_cfg, tmp_path):
    # A reward any policy can learn fast: the fraction of "7"s among the first four characters.
    def sevens(example, completion):
        return completion[:4].count("7") / 4

    model = Transformer(small_cfg)
    cfg = GRPOConfig(
        steps=16,
        prompts_per_step=4,
        group_size=8,
        max_new_tokens=4,
        lr=1e-2,
        template="plain",
        rewards=("plain_accuracy",),
        reward_weights=(1.0,),
        mu=2,
        beta=0.01,
        ref_refresh_every=5,
        eval_k=2,
    )
    history = train_grpo(
        model,
        TASK_ROWS,
        cfg,
        eval_examples=TASK_ROWS[:4],
        reward_fns={"sevens": sevens},
        ckpt_dir=tmp_path / "ckpt",
        progress=False,
    )
    for name in (
        "reward",
        "accuracy",
        "format_rate",
        "kl",
        "clip_frac",
        "completion_len",
        "zero_adv_frac",
        "loss",
    ):
        values = getattr(history, name)
        assert len(values) == 16 and all(math.isfinite(v) for v in values), name
    assert history.eval_step == [0, 16] and {"accuracy", "format_rate", "pass@2"} <= set(
        history.eval[-1]
    )
    assert np.mean(history.reward[-3:]) > np.mean(history.reward[:3]) + 0.3, history.reward
    assert max(history.kl) > 0.0 and history.gen_seconds > 0 and history.update_seconds > 0
    meta = read_meta(tmp_path / "ckpt")
    assert meta["step"] == 16 and meta["train_config"]["group_size"] == 8


def test_trainer_rejects_more_prompts_per_step_than_prompts(small_cfg):
    with pytest.raises(ValueError, match="prompts_per_step"):
        train_grpo(
            Transformer(small_cfg), TASK_ROWS[:3], GRPOConfig(prompts_per_step=4), progress=False
        )

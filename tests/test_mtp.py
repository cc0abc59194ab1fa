"""Multi-token prediction (minids/mtp.py) and self-speculative decoding (minids.generate).

The speculative tests use a model whose MTP module is wired, by hand, to guess the token after next
as a bigram model of the main model would: its projection passes the embedding of token t+1 through
and its block adds nothing, so the draft is the main model's head on that embedding alone. The main
model's attention and feed-forward still move its own prediction, so some drafts are kept and some
rejected, which is what the rollback of the cache needs to be tested (no training, one compile).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minids.checkpoint import load_checkpoint, save_checkpoint
from minids.config import FP8Config, MLAConfig, MoEConfig, MTPConfig, param_counts, preset
from minids.fp8 import Fp8Linear
from minids.generate import accept_draft, generate, generate_speculative
from minids.model import Transformer, count_params
from minids.mtp import drop_mtp, mtp_depth_losses, mtp_hidden_states, mtp_targets, shift_left
from minids.train import loss_and_aux

TOKENS = jnp.array([[1, 5, 9, 4, 7, 3, 8, 2], [1, 6, 6, 2, 9, 11, 4, 10]], jnp.int32)


@pytest.fixture(scope="module")
def mtp_cfg(cfg):
    return cfg.replace(mtp=MTPConfig(depth=2))


@pytest.fixture(scope="module")
def model(mtp_cfg):
    return Transformer(mtp_cfg)


def _batch(tokens):
    mask = (jnp.arange(tokens.shape[1])[None, :] >= 2).astype(jnp.float32)
    mask = jnp.broadcast_to(mask, tokens.shape)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask[:, 1:]}


# ------------------------------------------------------------------------------------ config


def test_mtp_config_validates_and_follows_v3s_schedule():
    mtp = MTPConfig()
    assert (mtp.depth, mtp.loss_weight, mtp.loss_weight_final) == (1, 0.3, 0.1)
    steps = 1480  # V3: 0.3 for the first 10T of 14.8T tokens
    assert mtp.weight_at(999, steps) == 0.3 and mtp.weight_at(1000, steps) == 0.1
    with pytest.raises(ValueError, match="mtp.depth"):
        MTPConfig(depth=0)
    with pytest.raises(ValueError, match="mtp.loss_weight"):
        MTPConfig(loss_weight=-0.1)
    with pytest.raises(ValueError, match="mtp must be None or a minids.config.MTPConfig"):
        preset("tiny", mtp=1)
    cfg = preset("tiny_v3", mtp=MTPConfig(depth=2))
    assert type(cfg).from_dict(cfg.to_dict()) == cfg  # a checkpoint's JSON config round-trips


# ------------------------------------------------------------------------------ the modules


def test_module_k_targets_the_token_k_further_on():
    targets = jnp.array([[10, 11, 12, 13]])
    mask = jnp.array([[0.0, 1.0, 1.0, 1.0]])
    t2, m2 = mtp_targets(targets, mask, 2)
    np.testing.assert_array_equal(t2, [[12, 13, 0, 0]])
    np.testing.assert_array_equal(m2, [[1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(shift_left(targets, 0), targets)


def test_module_k_sees_no_token_beyond_i_plus_k(model):
    """Causality (eq. 21): module k at position i reads tokens up to i + k and nothing later."""
    B, T = TOKENS.shape
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))

    @nnx.jit
    def states(model, tokens):
        hidden, _ = model.final_hidden(tokens)
        return mtp_hidden_states(model.mtp, model.embed, hidden, tokens, positions)[0]

    changed = TOKENS.at[:, 5].set(12)  # token 5 changes
    before, after = states(model, TOKENS), states(model, changed)
    for k, (a, b) in enumerate(zip(before, after, strict=True), start=1):
        # positions i with i + k < 5 do not see it; position 5 - k does
        np.testing.assert_allclose(a[:, : 5 - k], b[:, : 5 - k], atol=1e-6)
        assert not np.allclose(a[:, 5 - k], b[:, 5 - k], atol=1e-4), f"depth {k}"


def test_loss_is_main_plus_lambda_over_d_times_the_depth_losses(model):
    @nnx.jit
    def losses(model, batch):
        loss, aux = loss_and_aux(model, {**batch, "mtp_weight": jnp.float32(0.3)})
        hidden, _ = model.final_hidden(batch["inputs"])
        depth_losses, _ = mtp_depth_losses(model, hidden, batch)
        # Depth 1 by hand: eqs. 21-24 with the shared embedding and head.
        module = model.mtp[0]
        B, T = batch["inputs"].shape
        next_tokens = shift_left(batch["inputs"], 1)
        mixed = jnp.concatenate([module.enorm(model.embed(next_tokens)), module.hnorm(hidden)], -1)
        x = module.eh_proj(mixed.reshape(B * T, -1)).reshape(hidden.shape)
        x, _, _ = module.block(x, jnp.broadcast_to(jnp.arange(T), (B, T)))
        logp = jax.nn.log_softmax(model.output_head(module.head_norm(x)))
        target, mask = mtp_targets(batch["targets"], batch["loss_mask"], 1)
        picked = jnp.take_along_axis(logp, target[..., None], -1)[..., 0]
        return loss, aux["ce"], depth_losses, -jnp.sum(picked * mask) / jnp.sum(mask)

    loss, ce, depth_losses, by_hand = losses(model, _batch(TOKENS))
    assert depth_losses.shape == (2,)
    np.testing.assert_allclose(loss, ce + 0.3 / 2 * jnp.sum(depth_losses), rtol=1e-6)
    np.testing.assert_allclose(depth_losses[0], by_hand, rtol=1e-5)


def test_mtp_works_with_mla_moe_and_fp8(cfg):
    """Every attention and FFN minids has, in one model: MLA, MoE (in the module's block too), FP8
    GEMMs (in the module's linear layers too); and `tiny_v3` switches it on."""
    v3 = cfg.replace(
        mla=MLAConfig(
            q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8
        ),
        moe=MoEConfig(n_routed_experts=4, experts_per_token=2, expert_ffn_dim=16, n_dense_layers=1),
        fp8=FP8Config(act_block=(1, 16), weight_block=(16, 16), grad_block=(1, 16)),
        mtp=MTPConfig(),
    )
    model = Transformer(v3)
    assert model.mtp[0].block.use_moe and isinstance(model.mtp[0].eh_proj, Fp8Linear)
    loss, aux = nnx.jit(loss_and_aux)(model, _batch(TOKENS))
    assert np.isfinite(float(loss)) and aux["mtp_load"].shape == (1, 4)
    counts = param_counts(v3)
    assert count_params(model) == counts.total + counts.mtp
    assert count_params(model, activated=True) == counts.activated + counts.mtp_activated
    tiny_v3 = param_counts(preset("tiny_v3", mtp=MTPConfig()))
    assert tiny_v3.total == param_counts(preset("tiny_v3")).total and tiny_v3.mtp > 0


def test_v3s_mtp_module_is_the_released_weights_extra_11_5b():
    """README_WEIGHTS.md: 671B main model; the MTP module 11.5B of its own (+ the shared 0.9B
    embedding and 0.9B head, stored again in the release: 685B in all)."""
    counts = param_counts(preset("deepseek_v3", mtp=MTPConfig()))
    assert abs(counts.mtp / 11.5e9 - 1) < 0.02
    released = counts.total + counts.mtp + counts.embedding + counts.head
    assert abs(released / 685e9 - 1) < 0.005


def test_dropping_the_modules_keeps_the_main_model(model, mtp_cfg):
    plain = drop_mtp(model)
    assert plain.cfg == dataclasses.replace(mtp_cfg, mtp=None) and plain.mtp is None
    np.testing.assert_array_equal(plain(TOKENS), model(TOKENS))
    assert count_params(plain) == param_counts(plain.cfg).total


def test_checkpoint_saves_and_restores_the_modules(model, tmp_path):
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    np.testing.assert_array_equal(
        loaded.mtp[1].eh_proj.kernel[...], model.mtp[1].eh_proj.kernel[...]
    )


# ----------------------------------------------------------------- self-speculative decoding


@pytest.fixture(scope="module")
def drafter(cfg):
    """A model whose MTP module drafts like a bigram model of the main one (module docstring).

    Its output head also scores EOS exactly as the token the head favours most from single tokens,
    and argmax breaks the tie for EOS (the lower id), so that greedy sequences end at different
    steps."""
    model = Transformer(cfg.replace(mtp=MTPConfig()))
    module, D = model.mtp[0], cfg.d_model
    module.eh_proj.kernel[...] = jnp.concatenate([jnp.eye(D), jnp.zeros((D, D))], axis=0)
    module.block.attn.wo.kernel[...] = jnp.zeros_like(module.block.attn.wo.kernel[...])
    module.block.ffn.down.kernel[...] = jnp.zeros_like(module.block.ffn.down.kernel[...])
    head = model.lm_head.kernel[...]
    bigram = jnp.argmax(model.final_norm(model.embed.embed.embedding[...]) @ head, axis=-1)
    hub = int(jnp.argmax(jnp.bincount(bigram, length=cfg.vocab_size).at[2].set(0)))
    model.lm_head.kernel[...] = head.at[:, 2].set(head[:, hub])
    return model


# One compiled shape for every generation below: 600 rows, prompts padded to 16, 12 new
# tokens, top-3 (which leaves greedy decoding as it is).
PROMPTS = [[1, 5, 6, 7], [1, 9, 10, 11, 12, 13, 14, 15, 16, 17], [1, 30], [1, 40, 41]]
ROWS, NEW, TOP_K = 600, 12, 3


@pytest.fixture(scope="module")
def greedy_pair(drafter):
    prompts = PROMPTS * (ROWS // len(PROMPTS))
    plain = generate(drafter, prompts, max_new_tokens=NEW, top_k=TOP_K)
    spec = generate_speculative(drafter, prompts, max_new_tokens=NEW, top_k=TOP_K)
    return plain, spec


def test_greedy_speculative_decoding_equals_plain_greedy_token_for_token(greedy_pair):
    plain, spec = greedy_pair
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    np.testing.assert_allclose(spec.logprobs, plain.logprobs, atol=1e-5)
    # Drafts were both kept and rejected (so the cache was rolled back), each kept draft saved a
    # pass of the main model, and the sequences ended at their own EOS, at different steps.
    assert 0.2 < spec.acceptance_rate < 1.0, spec.acceptance_rate
    lengths = spec.lengths[: len(PROMPTS)]
    assert lengths.min() < NEW and len(set(lengths.tolist())) > 1, lengths
    assert np.all(spec.tokens[0, lengths[0] + 1 :] == 0)  # PAD after EOS


def test_the_acceptance_rule_gives_exactly_the_main_models_distribution():
    """d ~ q, kept with probability min(1, p(d)/q(d)), else redrawn from max(0, p - q): the token
    is distributed as p (Leviathan et al., 2023, Theorem 1). 40,000 draws, chi-square test."""
    p = jnp.array([0.5, 0.2, 0.2, 0.1, 0.0])
    q = jnp.array([0.1, 0.1, 0.3, 0.2, 0.3])
    n = 40_000
    k_draft, k_accept = jax.random.split(jax.random.key(0))
    draft = jax.random.categorical(k_draft, jnp.log(jnp.broadcast_to(q, (n, 5))), axis=-1)
    accepted, replacement = accept_draft(
        draft, jnp.broadcast_to(p, (n, 5)), jnp.broadcast_to(q, (n, 5)), k_accept
    )
    token = np.asarray(jnp.where(accepted, draft, replacement))
    counts = np.bincount(token, minlength=5)
    assert counts[4] == 0
    expected = n * np.asarray(p[:4])
    chi2 = float(np.sum((counts[:4] - expected) ** 2 / expected))
    assert chi2 < 16.3, (counts, chi2)  # 3 degrees of freedom, p = 0.001
    # and drafts are kept at the rate sum_x min(p(x), q(x)) = 0.5
    assert abs(float(accepted.mean()) - 0.5) < 0.01


def test_sampled_speculative_decoding_has_the_main_models_distribution(drafter):
    """The first two new tokens of one prompt, 600 samples each way: speculative sampling and
    plain sampling give the same distribution of pairs (two-sample chi-square test). The second
    token is the first one drafted; a rule that kept every draft would give the draft's."""
    prompts = [[1, 9, 10, 11]] * (ROWS - 1) + [PROMPTS[1]]  # the long one keeps the width
    args = dict(max_new_tokens=NEW, temperature=1.0, top_k=TOP_K)
    spec = generate_speculative(drafter, prompts, key=jax.random.key(1), **args)
    plain = generate(drafter, prompts, key=jax.random.key(2), **args)
    assert 0.05 < spec.accepted[:, 1].mean() < 0.95 * spec.drafted[:, 1].mean()
    pairs = [[tuple(row) for row in gen.tokens[: ROWS - 1, :2].tolist()] for gen in (spec, plain)]
    cells = sorted(set(pairs[0]) | set(pairs[1]))
    table = np.array([[p.count(c) for c in cells] for p in pairs], float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(np.sum((table - expected) ** 2 / expected))
    dof = len(cells) - 1
    assert chi2 < dof + 4 * np.sqrt(2 * dof) + 10, (chi2, dof, table)  # far in the tail


def test_speculative_decoding_needs_an_mtp_module(cfg):
    with pytest.raises(ValueError, match="MTP module"):
        generate(Transformer(cfg), [[1, 2]], speculative=True)


def test_the_command_line_switches_mtp_on_and_decodes_speculatively():
    from minids.__main__ import build_parser
    from minids.cost import cost_report, format_report

    train = build_parser().parse_args(["train", "--mtp-depth", "1"])
    assert train.mtp_depth == 1 and not hasattr(train, "mtp_loss_weight")
    assert not hasattr(build_parser().parse_args(["train"]), "mtp_depth")  # no module by default
    gen = ["generate", "--ckpt", "c", "--prompt", "1+1=", "--speculative"]
    assert build_parser().parse_args(gen).speculative
    report = format_report("v3", cost_report(preset("deepseek_v3", mtp=MTPConfig())))
    assert "MTP modules, not in the total       11.61 B" in report

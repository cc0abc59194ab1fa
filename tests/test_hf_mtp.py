"""minids.hf loads DeepSeek-V3's MTP layer: a small checkpoint written in the release's layout.

transformers' `DeepseekV3ForCausalLM` has no MTP layer, so the checkpoint is made here: a
transformers model with one layer more than the config will say is built and saved, and its last
layer becomes the MTP layer (index `num_hidden_layers`, README_WEIGHTS.md), given `enorm`, `hnorm`,
`eh_proj`, `shared_head.norm` and the copies of the embedding and head that the release stores.
The reference output is computed with transformers' own modules: the main layers, the final norm,
then eq. 21 in torch and transformers' decoder layer. Needs the `parity` extra (else skipped).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF_SMALL_V3
from flax import nnx

from minids.hf import load_hf_deepseek_v3
from minids.mtp import mtp_hidden_states

pytestmark = pytest.mark.parity

L = 2  # main layers; the MTP layer is model.layers.2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="pip install 'minids[parity]'")
    transformers = pytest.importorskip("transformers", reason="pip install 'minids[parity]'")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    folder = tmp_path_factory.mktemp("v3_mtp")
    config = transformers.DeepseekV3Config(
        # the last layer becomes the MTP block
        **{**HF_SMALL_V3, "num_hidden_layers": L + 1, "max_position_embeddings": 64},
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    model.save_pretrained(folder)
    D = config.hidden_size
    extra = {
        f"model.layers.{L}.enorm.weight": 1.0 + 0.2 * torch.randn(D),
        f"model.layers.{L}.hnorm.weight": 1.0 + 0.2 * torch.randn(D),
        f"model.layers.{L}.eh_proj.weight": torch.randn(D, 2 * D) / (2 * D) ** 0.5,
        f"model.layers.{L}.shared_head.norm.weight": 1.0 + 0.2 * torch.randn(D),
        f"model.layers.{L}.shared_head.head.weight": model.lm_head.weight.detach().clone(),
        f"model.layers.{L}.embed_tokens.weight": model.model.embed_tokens.weight.detach().clone(),
    }
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in extra.items()}, str(folder / "mtp.safetensors")
    )
    raw = json.loads((folder / "config.json").read_text())
    raw.update(num_hidden_layers=L, num_nextn_predict_layers=1)
    (folder / "config.json").write_text(json.dumps(raw))
    return torch, model, extra, folder


def test_the_mtp_layer_loads_and_gives_transformers_numbers(checkpoint):
    torch, reference, extra, folder = checkpoint
    cfg, model = load_hf_deepseek_v3(folder)
    assert cfg.n_layers == L and cfg.mtp is not None and cfg.mtp.depth == 1
    tokens = np.array([[1, 5, 9, 4, 7, 3, 8, 2, 11, 40]])
    B, T = tokens.shape

    # minids: h^0 (the final normalised hidden state), then module 1 (one compiled program)
    @nnx.jit
    def first_module_logits(model, tokens):
        hidden, _ = model.final_hidden(tokens)
        positions = jnp.broadcast_to(jnp.arange(T), (B, T))
        (h1,), _ = mtp_hidden_states(model.mtp, model.embed, hidden, tokens, positions)
        return hidden, model.output_head(h1)

    hidden, got = first_module_logits(model, jnp.asarray(tokens))
    got = np.asarray(got)
    # transformers: the main layers and norm, then eq. 21 and the extra layer, by hand
    with torch.no_grad():
        ids = torch.tensor(tokens)
        main = reference.model(ids, output_hidden_states=True).hidden_states[L]
        h0 = reference.model.norm(main)
        np.testing.assert_allclose(np.asarray(hidden), h0.numpy(), atol=1e-4)
        rms = reference.model.norm.__class__(32, eps=reference.config.rms_norm_eps)
        next_ids = torch.tensor(np.concatenate([tokens[:, 1:], [[0]]], axis=1))

        def norm(x, key):
            rms.weight.copy_(extra[key])
            return rms(x)

        e = norm(reference.model.embed_tokens(next_ids), f"model.layers.{L}.enorm.weight")
        h = norm(h0, f"model.layers.{L}.hnorm.weight")
        x = torch.cat([e, h], dim=-1) @ extra[f"model.layers.{L}.eh_proj.weight"].T
        pos = torch.arange(T)[None]
        rope = reference.model.rotary_emb(x, pos)
        causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
        x = reference.model.layers[L](
            x, attention_mask=causal, position_ids=pos, position_embeddings=rope
        )
        x = x[0] if isinstance(x, tuple) else x
        want = reference.lm_head(norm(x, f"model.layers.{L}.shared_head.norm.weight")).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_modules_can_be_left_out_or_must_match_the_shared_weights(checkpoint):
    torch, _, extra, folder = checkpoint
    cfg, model = load_hf_deepseek_v3(folder, mtp=False)
    assert cfg.mtp is None and model.mtp is None
    import safetensors.torch

    bad = dict(extra)
    key = f"model.layers.{L}.shared_head.head.weight"
    bad[key] = bad[key] + 1.0
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in bad.items()}, str(folder / "mtp.safetensors")
    )
    try:
        with pytest.raises(ValueError, match="shared_head.head.weight differs"):
            load_hf_deepseek_v3(folder)
    finally:
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in extra.items()}, str(folder / "mtp.safetensors")
        )

"""The optimized XLA build computes what the tests' build computes.

The test run compiles with most XLA optimizations off (tests/conftest.py explains why). Users run the
optimized build, so one test computes a training step's numbers both ways and compares them: a
DeepSeek-V3-shaped model (MLA, MoE with group-limited routing, FP8 GEMMs), its loss, its logits and
its gradient, here and in a fresh process with full optimization.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minids.config import FP8Config, preset
from minids.data import CharTokenizer, encode_examples, load_split
from minids.model import Transformer
from minids.train import loss_fn


def measure(out: str) -> None:
    """Loss, logits and flattened gradient of one batch, written to `out` (.npz)."""
    # FP8 quantization on every GEMM; the accumulator in float32 (its simulation has tests of its own).
    fp8 = FP8Config(acc_mantissa_bits=None)
    cfg = preset("tiny_v3", n_layers=2, d_model=32, ffn_dim=64).replace(fp8=fp8)
    model = Transformer(cfg)
    batch = {
        k: jnp.asarray(v)
        for k, v in encode_examples(load_split("val")[:8], CharTokenizer(), cfg.max_seq_len).items()
    }

    @nnx.jit
    def step(model, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
        return loss, model(batch["inputs"]), flat

    loss, logits, grad = step(model, batch)
    np.savez(out, loss=np.asarray(loss), logits=np.asarray(logits), grad=np.asarray(grad))


def test_optimized_build_computes_the_same(tmp_path):
    from conftest import TEST_XLA_FLAG  # here, not at the top: the subprocess imports this file

    assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1", "conftest.py switches them off"
    assert TEST_XLA_FLAG in os.environ["XLA_FLAGS"], "... and chooses these emitters"
    measure(str(tmp_path / "tested.npz"))
    # The build users run: full optimization, and XLA_FLAGS as the user set them (without the
    # test run's emitter choice, tests/conftest.py).
    user_flags = os.environ["XLA_FLAGS"].replace(TEST_XLA_FLAG, "").strip()
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "0", "XLA_FLAGS": user_flags}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    code += (
        f"from test_optimized_build import measure; measure({str(tmp_path / 'optimized.npz')!r})"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    tested, optimized = np.load(tmp_path / "tested.npz"), np.load(tmp_path / "optimized.npz")
    # Fused kernels add in another order, so the builds agree to float32 rounding, not bit for bit,
    # and a value on an FP8 rounding boundary can land on either side: a few entries move by one
    # FP8 step. So the comparison is of whole tensors, by relative error and direction.
    for name in ("loss", "logits", "grad"):
        a, b = optimized[name].ravel(), tested[name].ravel()
        rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert rel < 1e-2 and cosine > 0.9999, f"{name}: relative error {rel:.2e}, cosine {cosine}"

"""Shared test setup: strict shapes, deterministic hypothesis, small configs, and a guard on data/.

- `jax_numpy_rank_promotion="raise"` (the equinox habit): an implicit broadcast between arrays of
  different ranks, `(B, T, D) * (D,)`, is an error in tests, so every broadcast in minids is explicit.
- Hypothesis runs derandomized and without an example database, so a test run is reproducible and
  writes nothing into the repository.
- `data/` holds the shipped splits; a session fixture checks that no test changed a byte of it.
- One XLA compilation cache for the whole run, shared by the xdist workers and by the processes the
  tests start (notebook kernels, benchmark scripts, the CLI): many tests compile the same small
  programs, which are then compiled once. A fresh folder per run, so no run reads another's, removed
  when the run ends (a run's cache is about 70 MB). Every compilation is kept, however quick:
  building a model compiles one small program per weight shape, and a notebook kernel or a CLI run
  would otherwise compile them all again.
- XLA compiles with most optimizations off (`jax_disable_most_optimizations`), and XLA:CPU emits
  its loops with the older elemental emitters (`--xla_cpu_use_fusion_emitters=false`), here and in
  the processes the tests start. At these shapes a test spends most of its time compiling: the first
  takes about a third off the run, the second about a third of what is left (measured on
  tests/test_mla.py alone: 97 s -> 61 s). The tests check what is computed, which does not depend on how
  hard the compiler worked; `test_optimized_build_computes_the_same` runs a model with full
  optimization and compares it with this build, and `make bench` and `make notebooks` use the
  optimized build.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# Before jax starts its CPU backend, which reads XLA_FLAGS once; a user's own flags are kept.
# test_optimized_build.py removes this flag again for the build users run.
TEST_XLA_FLAG = "--xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAG}"

import jax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from minids.config import ModelConfig, preset  # noqa: E402
from minids.data import DATA_DIR  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# The first process of a run to load this file (xdist's controller, or a plain pytest) makes the
# folder; the workers and every process the tests start inherit it through the environment, and
# the maker removes it when the run ends (pytest_sessionfinish), so runs do not pile up in /tmp.
_CACHE_ENV = "MINIDS_TEST_XLA_CACHE"
_owns_cache = _CACHE_ENV not in os.environ
if _owns_cache:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="minids-xla-cache-")
_cache = Path(os.environ[_CACHE_ENV])
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_cache)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_disable_most_optimizations", True)

settings.register_profile(
    "minids",
    deadline=None,  # the first call of a jitted function compiles
    derandomize=True,
    database=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("minids")


def pytest_sessionfinish(session, exitstatus):
    if _owns_cache:
        shutil.rmtree(_cache, ignore_errors=True)
        del os.environ[_CACHE_ENV]


def _snapshot(folder) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="session", autouse=True)
def data_dir_is_read_only():
    """Fail the session if any test created, changed or deleted a file in the repository's data/."""
    before = _snapshot(DATA_DIR)
    yield
    assert _snapshot(DATA_DIR) == before, "a test wrote into the repository's data/; use tmp_path"


@pytest.fixture(scope="session")
def cfg() -> ModelConfig:
    """A 2-layer GQA model small enough to compile in about a second: N=4 query, M=2 kv heads."""
    return preset(
        "tiny",
        n_layers=2,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        ffn_dim=64,
        max_seq_len=24,
    )


# A small DeepSeek-V3 in transformers' config fields (the parity tests build it): MLA with a compressed
# query, 8 routed experts in 4 groups (top 2 groups), one dense layer first.
HF_SMALL_V3 = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_shared_experts=1,
    n_routed_experts=8,
    routed_scaling_factor=2.5,
    kv_lora_rank=16,
    q_lora_rank=24,
    qk_rope_head_dim=8,
    v_head_dim=12,
    qk_nope_head_dim=8,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    first_k_dense_replace=1,
    max_position_embeddings=256,
)


# The longest tests first (notebooks in smoke mode, then the benchmark scripts, then the graders):
# the two xdist workers then share out the many short ones at the end, instead of one worker
# starting a two-minute notebook when the other has nothing left to do.
_FIRST = (
    "tests/test_notebooks.py::test_notebook_runs",
    "tests/test_benchmarks.py",
    "tests/test_exercises.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, p in enumerate(_FIRST) if item.nodeid.startswith(p)), len(_FIRST))

    items.sort(key=rank)  # stable: within a rank, the usual order


def once_per_run(tmp_path_factory, name: str, compute: Callable[[Path], object]):
    """`compute(folder)` once per test run, its JSON result shared by the xdist workers.

    A session fixture runs once per worker, and work stealing can hand a module's tests to both
    workers: the graders, the benchmark scripts and the 8-device checks would then all run twice.
    The first worker to ask computes, under a file lock in the run's shared temporary folder; the
    other reads what it wrote. A failure is not cached: the next worker to ask tries again.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    result = shared / f"once-{name}.json"
    with (shared / f"once-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however this block ends
        if not result.exists():
            folder = shared / f"once-{name}"
            folder.mkdir(exist_ok=True)
            result.write_text(json.dumps(compute(folder)))
        return json.loads(result.read_text())


@functools.cache
def compiled(method: str = "__call__") -> Callable:
    """`compiled(name)(model, *args)` computes `model.name(*args)` as one compiled program.

    Called eagerly, a model's first forward pass compiles each operation as a program of its own:
    about 250 of them for a 2-layer tiny_v3, 5 s in the test build, against under 1 s for the whole
    pass compiled once. Tests that compare a model's numbers (with transformers, with a restored
    copy, with another batch) call it through this; what they check does not depend on it.
    """
    return nnx.jit(lambda model, *args: getattr(model, method)(*args))

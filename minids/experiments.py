"""Experiment exercises: predict, measure over three seeds, explain (exercises/experiment_NN_*.py).

Each notebook has one experiment exercise. The student writes down a prediction, fills a few lines of
`measure(setting, seed)` in the exercise file, runs the file (`run_experiment` below loops over the
settings and the seeds, prints mean ± std and a `MEASURED = {...}` dict to paste back), then states a
conclusion and explains it. A grader checks what a machine can check (the measured numbers lie in the
range a correct experiment gives, the conclusion follows from them); a teacher reads the explanation
with the rubric in exercises/rubrics/.

This module is the answer key, as the rest of minids is for the other exercises: `measure_NN` is the
reference experiment of notebook NN, and `REFERENCE` holds its results as measured on a 2-core CPU by
`python tools/measure_experiments.py` (three seeds). Every experiment runs in at most a few minutes
on a laptop CPU.

| NN | the question | settings |
|----|--------------|----------|
| 00 | how does the validation loss fall with the model width D? | D = 16, 32, 64 |
| 01 | MaxVio of a skewed router under aux-free balancing, at three bias speeds γ (V3 §2.1.2) | γ = 0, 1e-3, 1e-2, 1e-1 |
| 02 | the smallest MLA latent width C whose loss is within noise of MHA (V2 §2.1) | MHA, C = 2, 8, 32 |
| 03 | the FP8 quantization error of an activation with outlier channels, per tile size (V3 §3.3.2) | tensor, 1x1024, 1x128, 1x32, 1x8 |
| 04 | which reward does GRPO hack? (R1 §2.2.2) | format, accuracy, contains, format+accuracy |
| 05 | the distillation temperature T with few transfer examples (Hinton et al. 2015; R1 §2.4) | T = 1, 2, 4, 8 |
| 06 | more routed experts at the same activated parameters (V3 §2.1.2, DeepSeekMoE) | E = 2, 8, 32 |
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SEEDS = (0, 1, 2)

# ------------------------------------------------------------------------------------ harness


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def run_experiment(
    measure: Callable[..., Mapping[str, float]],
    settings: Sequence[str],
    seeds: Sequence[int] = SEEDS,
    **kwargs,
) -> dict[str, dict[str, list[float]]]:
    """Call `measure(setting, seed, **kwargs)` for every setting and seed; print a table of
    mean ± std and the `MEASURED = {...}` dict to paste into the exercise file; return that dict."""
    measured: dict[str, dict[str, list[float]]] = {}
    for setting in settings:
        for seed in seeds:
            metrics = measure(setting, seed, **kwargs)
            if not isinstance(metrics, Mapping):
                raise TypeError(f"measure must return a dict of metrics, got {type(metrics)}")
            for name, value in metrics.items():
                value = float(value)  # counts exactly, measurements to 4 significant digits
                measured.setdefault(setting, {}).setdefault(name, []).append(
                    value if value.is_integer() else float(f"{value:.4g}")
                )
        row = ", ".join(
            f"{k} {mean_std(v)[0]:.4g} ± {mean_std(v)[1]:.2g}" for k, v in measured[setting].items()
        )
        print(f"{setting:>18}: {row}  (mean ± std over {len(seeds)} seeds)", flush=True)
    print("\nMEASURED = " + format_measured(measured))
    return measured


def format_measured(measured: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """A dict literal, one setting a line, to paste into the exercise file."""
    lines = [
        f"    {s!r}: {{{', '.join(f'{k!r}: {list(v)}' for k, v in m.items())}}},"
        for s, m in measured.items()
    ]
    return "{\n" + "\n".join(lines) + "\n}"


# ------------------------------------------------------------ shared: a tiny model, trained briefly


@functools.cache
def _rows():
    from minids.data import load_split

    return load_split("train"), load_split("val")


def _base_config(**overrides):
    """Notebooks 01 and 02's small model: 2 layers, D = 64, 4 heads of 16, SwiGLU of 192."""
    from minids.config import preset

    base = preset("tiny", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, ffn_dim=192)
    return base.replace(**overrides)


def train_and_validate(cfg, seed: int, steps: int = 150, batch_size: int = 32) -> dict[str, float]:
    """Train a fresh `Transformer(cfg)` from `seed` for `steps` steps on the shipped tasks; return its
    validation loss on 256 examples and its parameter count (total, and activated per token)."""
    from flax import nnx

    from minids.model import Transformer, count_params
    from minids.train import TrainConfig, fit

    train, val = _rows()
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    train_cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=3e-3,
        warmup_steps=max(1, steps // 10),
        eval_every=0,
        eval_examples=256,
        seed=seed,
    )
    history = fit(model, train, val, train_cfg, progress=False)
    return {
        "val_loss": history.val_loss[-1],
        "params": count_params(model),
        "activated": count_params(model, activated=True),
    }


# --------------------------------------------------------------------------- 00: model width

SETTINGS_00 = ("D=16", "D=32", "D=64")


def measure_00(setting: str, seed: int, steps: int = 150) -> dict[str, float]:
    """Validation loss of a 2-layer model of width D (4 heads of D/4, SwiGLU of 3D) after `steps`."""
    D = int(setting.removeprefix("D="))
    cfg = _base_config(d_model=D, head_dim=D // 4, ffn_dim=3 * D)
    result = train_and_validate(cfg, seed, steps)
    return {"val_loss": result["val_loss"], "params": result["params"]}


# ------------------------------------------------------------- 01: aux-free balancing, three γ

SETTINGS_01 = ("0", "0.001", "0.01", "0.1")


def measure_01(setting: str, seed: int, steps: int = 300) -> dict[str, float]:
    """MaxVio of a frozen, skewed sigmoid router balanced by V3's bias rule at speed γ = setting.

    16 experts, 2 per token, batches of 256 fresh tokens; the router's logits are x W plus a skew
    from +3 (expert 0) to -3 (expert 15), so without balancing the first experts are overloaded.
    MaxVio = max load / mean load - 1, averaged over the last fifth of the steps.
    """
    from minids.config import MoEConfig
    from minids.moe import aux_free_bias_update, expert_load, router_scores, select_experts

    gamma = float(setting)
    E, K, T, D = 16, 2, 256, 32
    cfg = MoEConfig(n_routed_experts=E, experts_per_token=K)
    k_w, k_x = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(k_w, (D, E)) / math.sqrt(D)
    skew = jnp.linspace(3.0, -3.0, E)

    def step(bias, x):
        scores = router_scores(x @ w + skew[None, :], "sigmoid")
        indices, _ = select_experts(scores, bias, cfg)
        load = expert_load(indices, E)
        return aux_free_bias_update(bias, load, gamma), jnp.max(load) * E - 1.0

    tokens = jax.random.normal(k_x, (steps, T, D))
    _, max_vio = jax.lax.scan(step, jnp.zeros(E), tokens)
    return {"max_vio": float(jnp.mean(max_vio[-max(1, steps // 5) :]))}


# ------------------------------------------------------------------ 02: MLA latent width vs MHA

SETTINGS_02 = ("MHA", "C=2", "C=8", "C=32")


def measure_02(setting: str, seed: int, steps: int = 150) -> dict[str, float]:
    """Validation loss of the 2-layer model with MHA, or with MLA of latent width C (R = 8)."""
    from minids.mla import MLAConfig

    if setting == "MHA":
        cfg = _base_config()
    else:
        C = int(setting.removeprefix("C="))
        mla = MLAConfig(kv_lora_rank=C, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
        cfg = _base_config(mla=mla)
    return {"val_loss": train_and_validate(cfg, seed, steps)["val_loss"]}


# ------------------------------------------------------------------ 03: FP8 tiles and outliers

SETTINGS_03 = ("tensor", "1x1024", "1x128", "1x32", "1x8")


def outlier_activation(
    seed: int, rows: int = 64, cols: int = 1024, n_outliers: int = 4, size: float = 3e4
):
    """Gaussian activations whose `n_outliers` channels (columns) are `size` times larger, the
    pattern LLM activations show; returns (x, the boolean mask of the outlier columns)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    outliers = np.zeros(cols, bool)
    outliers[rng.choice(cols, n_outliers, replace=False)] = True
    x[:, outliers] *= size
    return jnp.asarray(x), outliers


def measure_03(setting: str, seed: int) -> dict[str, float]:
    """Relative RMS error of E4M3 quantize -> dequantize on the ordinary (non-outlier) channels of
    `outlier_activation`, with one scale per tensor or per 1 x t tile; and the bytes of scales per
    FP8 byte (a float32 scale per tile)."""
    from minids.fp8 import dequantize, quantize

    x, outliers = outlier_activation(seed)
    block = None if setting == "tensor" else (1, int(setting.removeprefix("1x")))
    back = dequantize(*quantize(x, "e4m3", block), block)
    ordinary = np.asarray(x)[:, ~outliers]
    error = np.asarray(back)[:, ~outliers] - ordinary
    overhead = 4.0 / x.size if block is None else 4.0 / (block[0] * block[1])
    return {
        "rel_error": float(np.sqrt(np.mean(error**2)) / np.sqrt(np.mean(ordinary**2))),
        "scale_overhead": overhead,
    }


# ---------------------------------------------------------------------------- 04: reward hacking

SETTINGS_04 = ("format", "accuracy", "contains", "format+accuracy")
STYLES_04 = ("right", "wrong", "bare", "spray", "untagged")


def completions_04(example: Mapping[str, str]) -> list[str]:
    """Five ways a policy can answer an addition prompt, in the order of STYLES_04."""
    from minids.rewards import dropped_carry_sum, r1_completion

    right, wrong = example["answer"], dropped_carry_sum(example["prompt"])
    near = " ".join(str(int(right) + d) for d in (-1, 0, 1))
    return [
        r1_completion("ones then tens", right),  # right: formatted and correct
        r1_completion("ones then tens", wrong),  # wrong: formatted, the carry dropped
        right,  # bare: correct, no tags
        r1_completion(near, str(int(right) + 1)),  # spray: lists the neighbours, answers one off
        f"<answer>{right}</answer>",  # untagged reasoning: correct answer, no <think>
    ]


def contains_reward(example: Mapping[str, str], completion: str) -> float:
    """A lazily written checker: 1 when the right answer appears anywhere in the completion."""
    return float(isinstance(completion, str) and example["answer"] in completion)


def reward_table_04(setting: str, examples: Sequence[Mapping[str, str]]) -> np.ndarray:
    """(prompts, styles): the reward `setting` gives each style of each prompt."""
    from minids.rewards import accuracy_reward, format_reward

    fns = {
        "format": [format_reward],
        "accuracy": [accuracy_reward],
        "contains": [contains_reward],
        "format+accuracy": [format_reward, accuracy_reward],
    }[setting]
    return np.array(
        [[sum(f(ex, c) for f in fns) for c in completions_04(ex)] for ex in examples], np.float32
    )


@functools.cache
def _addition_examples(n: int = 64) -> tuple[dict[str, str], ...]:
    train, _ = _rows()
    return tuple([r for r in train if r["task"] == "add"][:n])


def measure_04(setting: str, seed: int, steps: int = 100) -> dict[str, float]:
    """GRPO on a five-style policy (one logit per style, STYLES_04, uniform at the start) for
    addition prompts, rewarded by `setting`; returns the final policy's expected reward and its
    expected accuracy (accuracy_reward, which is what we wanted)."""
    from minids.grpo import clipped_surrogate, group_advantages
    from minids.rewards import accuracy_reward

    examples = _addition_examples()
    rewards = jnp.asarray(reward_table_04(setting, examples))  # (P, S)
    correct = jnp.asarray(
        [[accuracy_reward(ex, c) for c in completions_04(ex)] for ex in examples], jnp.float32
    )
    P, S = rewards.shape
    B, G, lr = 16, 8, 0.5

    def iteration(logits, key):
        k_prompts, k_samples = jax.random.split(key)
        prompts = jax.random.choice(k_prompts, P, (B,), replace=False)
        styles = jax.random.categorical(k_samples, logits, shape=(B, G))  # (B, G)
        advantages = group_advantages(rewards[prompts[:, None], styles])  # (B, G)

        def loss(theta):  # one token per completion: the style
            logp = jax.nn.log_softmax(theta)[styles].reshape(B * G, 1)
            mask = jnp.ones_like(logp, bool)
            gain = clipped_surrogate(
                logp, jax.lax.stop_gradient(logp), advantages.reshape(-1), mask
            )
            return -jnp.mean(gain)

        return logits - lr * jax.grad(loss)(logits), None

    logits, _ = jax.lax.scan(iteration, jnp.zeros(S), jax.random.split(jax.random.key(seed), steps))
    policy = jax.nn.softmax(logits)
    return {
        "reward": float(jnp.mean(rewards @ policy)),
        "accuracy": float(jnp.mean(correct @ policy)),
    }


# -------------------------------------------------------------------- 05: distillation temperature

SETTINGS_05 = ("T=1", "T=2", "T=4", "T=8")


def measure_05(setting: str, seed: int, steps: int = 300, n_transfer: int = 16) -> dict[str, float]:
    """Distil a fixed random two-layer teacher (16 inputs -> 10 classes) into a linear student
    from `n_transfer` inputs with T^2 KL at temperature T; return the student's top-1 agreement
    with the teacher and its KL at T = 1, both on 4096 held-out inputs."""
    import optax

    from minids.distill import distillation_loss

    T = float(setting.removeprefix("T="))
    k_teacher, k_data, k_test = jax.random.split(jax.random.key(seed), 3)
    k1, k2 = jax.random.split(k_teacher)
    w1, w2 = jax.random.normal(k1, (16, 64)) / 4.0, jax.random.normal(k2, (64, 10))

    def teacher(x):
        return jnp.tanh(x @ w1) @ w2

    x_train = jax.random.normal(k_data, (1, n_transfer, 16))
    x_test = jax.random.normal(k_test, (1, 4096, 16))
    params = {"w": jnp.zeros((16, 10)), "b": jnp.zeros(10)}
    tx = optax.adam(0.05)

    def student(p, x):
        return x @ p["w"] + p["b"][None, None, :]

    def step(carry, _):
        p, opt = carry
        grads = jax.grad(lambda p: distillation_loss(student(p, x_train), teacher(x_train), T))(p)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    s, t = student(params, x_test), teacher(x_test)
    return {
        "agreement": float(jnp.mean(jnp.argmax(s, -1) == jnp.argmax(t, -1))),
        "kl": float(distillation_loss(s, t, 1.0)),
    }


# ------------------------------------------------------------------ 06: number of routed experts

SETTINGS_06 = ("E=2", "E=8", "E=32")


def measure_06(setting: str, seed: int, steps: int = 150) -> dict[str, float]:
    """Validation loss of the 2-layer model whose second block is a V3-style MoE with E routed
    experts (2 per token, one shared, experts of width 64, aux-free balancing): more experts
    add parameters but not activated ones."""
    from minids.config import MoEConfig

    E = int(setting.removeprefix("E="))
    moe = MoEConfig(
        n_routed_experts=E,
        n_shared_experts=1,
        experts_per_token=2,
        expert_ffn_dim=64,
        n_dense_layers=1,
        balancing="aux_free",
        bias_update_speed=1e-2,
    )
    result = train_and_validate(_base_config(moe=moe), seed, steps)
    return {k: result[k] for k in ("val_loss", "params", "activated")}


MEASURES: dict[str, tuple[Callable[..., Mapping[str, float]], tuple[str, ...]]] = {
    "00": (measure_00, SETTINGS_00),
    "01": (measure_01, SETTINGS_01),
    "02": (measure_02, SETTINGS_02),
    "03": (measure_03, SETTINGS_03),
    "04": (measure_04, SETTINGS_04),
    "05": (measure_05, SETTINGS_05),
    "06": (measure_06, SETTINGS_06),
}

# The reference answers (the graders' answer key under MINIDS_EXERCISES=solutions): PREDICTION and
# CONCLUSION as a student who has done the experiment would write them, MEASURED as printed by
# `python tools/measure_experiments.py` (3 seeds, a 2-core CPU).
REFERENCE: dict[str, dict] = {
    "00": {
        "PREDICTION": {
            "val_loss_at_D16": 2.2,
            "val_loss_at_D64": 1.5,
            "smallest_within_noise": "D=64",
        },
        "MEASURED": {
            "D=16": {"val_loss": [2.262, 2.302, 2.121], "params": [10832, 10832, 10832]},
            "D=32": {"val_loss": [1.76, 1.764, 1.692], "params": [34976, 34976, 34976]},
            "D=64": {"val_loss": [1.551, 1.511, 1.571], "params": [123200, 123200, 123200]},
        },
        "CONCLUSION": "D=64",
        "EXPLANATION": "The loss falls with width but far slower than the parameters grow: about "
        "11x more parameters from D=16 to D=64. In 150 steps a wider model also "
        "learns faster per step, so the gap here mixes capacity with speed; after "
        "2000 steps the ranking could narrow or widen, which this run cannot tell.",
    },
    "01": {
        "PREDICTION": {"max_vio_without_balancing": 4.0, "best_gamma": "0.01"},
        "MEASURED": {
            "0": {"max_vio": [4.4, 4.157, 4.858]},
            "0.001": {"max_vio": [1.274, 1.087, 1.046]},
            "0.01": {"max_vio": [0.4328, 0.4109, 0.4469]},
            "0.1": {"max_vio": [2.348, 2.228, 2.377]},
        },
        "CONCLUSION": "0.01",
        "EXPLANATION": "Without balancing the skew sends nearly every token to the first experts. "
        "With gamma 0.001 the bias moves at most 0.3 in 300 steps, less than the "
        "score gap, so it is still converging; with 0.1 each step overshoots and "
        "the chosen experts swap back and forth. At 0.01 what remains is batch "
        "noise plus an oscillation of size gamma.",
    },
    "02": {
        "PREDICTION": {"smallest_within_noise": "C=8", "c2_within_noise": False},
        "MEASURED": {
            "MHA": {"val_loss": [1.551, 1.511, 1.571]},
            "C=2": {"val_loss": [1.683, 1.669, 1.758]},
            "C=8": {"val_loss": [1.604, 1.64, 1.587]},
            "C=32": {"val_loss": [1.584, 1.59, 1.581]},
        },
        "CONCLUSION": "none",
        "EXPLANATION": "The latent must carry what 4 heads need to rebuild their keys and values; "
        "in a 2-layer model trained for 150 steps the attention uses few "
        "directions, so a narrow latent loses little. Within noise over 3 seeds "
        "means we could not tell them apart, not that they are equal; the cache "
        "saving at the answer is 128 numbers per token against C + 8.",
    },
    "03": {
        "PREDICTION": {"best_tile": "1x8", "tensor_over_1x128": 3.0},
        "MEASURED": {
            "tensor": {
                "rel_error": [0.1032, 0.1183, 0.09954],
                "scale_overhead": [6.104e-05, 6.104e-05, 6.104e-05],
            },
            "1x1024": {
                "rel_error": [0.06115, 0.06303, 0.05868],
                "scale_overhead": [0.003906, 0.003906, 0.003906],
            },
            "1x128": {
                "rel_error": [0.03484, 0.03531, 0.03379],
                "scale_overhead": [0.03125, 0.03125, 0.03125],
            },
            "1x32": {
                "rel_error": [0.0268, 0.02699, 0.02657],
                "scale_overhead": [0.125, 0.125, 0.125],
            },
            "1x8": {"rel_error": [0.02077, 0.02068, 0.02077], "scale_overhead": [0.5, 0.5, 0.5]},
        },
        "CONCLUSION": "1x8",
        "EXPLANATION": "An outlier sets the scale of its whole group, so its neighbours fall into "
        "E4M3's subnormals. Smaller tiles share a scale with an outlier less often "
        "(4t/1024 of the values), until the error reaches E4M3's own rounding floor "
        "near 2 percent. V3 keeps 1x128: 3 percent overhead for scales, and the "
        "GEMM promotes to FP32 every 128 elements of K, where the scale is "
        "applied.",
    },
    "04": {
        "PREDICTION": {"hacked": ["contains", "format"]},
        "MEASURED": {
            "format": {"reward": [0.9899, 0.99, 0.9914], "accuracy": [0.4624, 0.5816, 0.5013]},
            "accuracy": {"reward": [0.9878, 0.9897, 0.9875], "accuracy": [0.9878, 0.9897, 0.9875]},
            "contains": {"reward": [0.9927, 0.9941, 0.9924], "accuracy": [0.5012, 0.5064, 0.4911]},
            "format+accuracy": {
                "reward": [1.99, 1.992, 1.991],
                "accuracy": [0.9942, 0.9952, 0.9945],
            },
        },
        "CONCLUSION": ["contains", "format"],
        "EXPLANATION": "GRPO only moves probability between styles whose rewards differ within a "
        "group. The format reward scores right, wrong and spray alike, and the lazy "
        "contains check also pays bare and spray, so the policy keeps its mix of "
        "them and accuracy stays near one half. Accuracy-based rewards separate "
        "correct styles, as R1-Zero's rule rewards do.",
    },
    "05": {
        "PREDICTION": {"best_T": "T=4", "agreement_at_T1": 0.4},
        "MEASURED": {
            "T=1": {"agreement": [0.4539, 0.4055, 0.3689], "kl": [1.511, 1.55, 1.777]},
            "T=2": {"agreement": [0.5254, 0.4875, 0.4697], "kl": [1.353, 1.212, 1.726]},
            "T=4": {"agreement": [0.5281, 0.4868, 0.4905], "kl": [1.5, 1.397, 1.789]},
            "T=8": {"agreement": [0.5222, 0.4597, 0.4836], "kl": [1.598, 1.731, 1.887]},
        },
        "CONCLUSION": "T=4",
        "EXPLANATION": "At T=1 the confident teacher is nearly one-hot, so 16 examples give 16 "
        "labels. A higher T shows how the teacher ranks the other classes, so each "
        "example constrains all ten logits. The gain levels off because very flat "
        "targets say less about the T=1 distribution; with many examples or a "
        "softer teacher T=1 would do about as well.",
    },
    "06": {
        "PREDICTION": {"loss_falls_with_E": False, "smallest_within_noise": "E=2"},
        "MEASURED": {
            "E=2": {
                "val_loss": [1.556, 1.534, 1.563],
                "params": [123328, 123328, 123328],
                "activated": [115200, 115200, 115200],
            },
            "E=8": {
                "val_loss": [1.541, 1.5, 1.544],
                "params": [197440, 197440, 197440],
                "activated": [115584, 115584, 115584],
            },
            "E=32": {
                "val_loss": [1.551, 1.521, 1.51],
                "params": [493888, 493888, 493888],
                "activated": [117120, 117120, 117120],
            },
        },
        "CONCLUSION": "E=2",
        "EXPLANATION": "More experts add total parameters but not activated ones, and in 150 steps "
        "each of 32 experts sees only about 2/32 of the tokens, so it is barely "
        "trained; the loss does not fall measurably with E here. V3 needs far more "
        "tokens, balanced routing (aux-free bias) and expert-parallel communication "
        "for many experts to pay.",
    },
}

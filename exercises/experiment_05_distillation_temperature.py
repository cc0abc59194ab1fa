"""Experiment 05: what does the temperature T buy in logit distillation? (Hinton et al. 2015; R1 §2.4)

Logit distillation trains the student on T^2 * KL(softmax(teacher / T) || softmax(student / T))
(`minids.distill.distillation_loss`, notebook 05). At T = 1 a confident teacher's distribution is
nearly one-hot: it says little more than the label. A higher T flattens it and shows how the
teacher ranks the wrong classes, the "dark knowledge"; T^2 keeps the gradients' size comparable.

Here the teacher is a fixed random two-layer network (16 inputs -> 10 classes, confident), the
student a linear classifier that sees only 16 transfer inputs, and the score is how often the
student's top class agrees with the teacher's on 4096 held-out inputs (and the KL at T = 1).

1. Predict (fill PREDICTION): the T (1, 2, 4 or 8) that gives the highest held-out agreement,
   and the agreement at T = 1 (a fraction).
2. Measure: complete the loss in `measure` (one line), then run
   `python exercises/experiment_05_distillation_temperature.py` (under a minute). Paste MEASURED.
3. Conclude and explain: CONCLUSION is the T with the highest mean agreement. In EXPLANATION, say
   why T > 1 helps a student that sees few examples, why the gain levels off, and when you would
   expect T = 1 to do as well (think of many transfer examples, or a less confident teacher).

`pytest exercises/test_experiment_05_distillation_temperature.py` checks what a machine can; your
teacher reads the explanation.

Points: 6 in all (PREDICTION 1, MEASURED 3, CONCLUSION 1, EXPLANATION 1)
"""

# ruff: noqa: F401, F841  (the names the stub leaves unused are for the lines you write)
import jax
import jax.numpy as jnp
import optax

from minids.distill import distillation_loss
from minids.experiments import run_experiment

SETTINGS = ("T=1", "T=2", "T=4", "T=8")


def measure(setting: str, seed: int, steps: int = 300, n_transfer: int = 16) -> dict[str, float]:
    T = float(setting.removeprefix("T="))
    k_teacher, k_data, k_test = jax.random.split(jax.random.key(seed), 3)
    k1, k2 = jax.random.split(k_teacher)
    w1, w2 = jax.random.normal(k1, (16, 64)) / 4.0, jax.random.normal(k2, (64, 10))

    def teacher(x):
        return jnp.tanh(x @ w1) @ w2

    def student(p, x):
        return x @ p["w"] + p["b"][None, None, :]

    x_train = jax.random.normal(k_data, (1, n_transfer, 16))  # (B, T, features): one "sequence"
    x_test = jax.random.normal(k_test, (1, 4096, 16))
    params = {"w": jnp.zeros((16, 10)), "b": jnp.zeros(10)}
    tx = optax.adam(0.05)

    def loss(p):
        # TODO: the distillation loss of the student's logits on x_train against the teacher's, at T.
        raise NotImplementedError

    def step(carry, _):
        p, opt = carry
        updates, opt = tx.update(jax.grad(loss)(p), opt, p)
        return (optax.apply_updates(p, updates), opt), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    s, t = student(params, x_test), teacher(x_test)
    return {
        "agreement": float(jnp.mean(jnp.argmax(s, -1) == jnp.argmax(t, -1))),
        "kl": float(distillation_loss(s, t, 1.0)),
    }


PREDICTION = {
    "best_T": None,  # one of the SETTINGS, e.g. "T=2"
    "agreement_at_T1": None,  # a fraction between 0 and 1
}
MEASURED = None  # paste the dict that running this file prints
CONCLUSION = None  # the T with the highest mean agreement, e.g. "T=2"
EXPLANATION = """
"""

if __name__ == "__main__":
    run_experiment(measure, SETTINGS)

"""Experiment 01: how fast should the aux-free bias move? (DeepSeek-V3 §2.1.2, eq. 16)

V3 balances its experts without an auxiliary loss: each expert i has a bias b_i that is added to its
score only to choose the top-K, and after every step b_i goes down by γ if expert i was overloaded
and up by γ if it was underloaded (`minids.moe.aux_free_bias_update`). V3 trains with γ = 0.001 for
most of its run. Notebook 01 measures this inside a training run; here you run the rule yourself on
a router that never learns, so that only the bias can balance it: 16 experts, 2 per token, batches
of 256 fresh tokens, and logits skewed from +3 (expert 0) to -3 (expert 15).

MaxVio = max_i load_i / mean load - 1 (0 when balanced; 1 when the busiest expert gets twice its
share), averaged over the last fifth of 300 steps.

1. Predict, before you run anything (fill PREDICTION): MaxVio without balancing (γ = 0), and which
   of γ = 0.001, 0.01, 0.1 ends up best balanced after 300 steps.
2. Measure: complete `measure` (four lines), then run `python exercises/experiment_01_moe_balance.py`
   (under a minute on a laptop CPU). It prints mean ± std over seeds 0, 1, 2 and a MEASURED dict:
   paste it below.
3. Conclude and explain: CONCLUSION is the γ with the lowest mean MaxVio (a key of MEASURED). In
   EXPLANATION, say in a few sentences why the smallest γ and the largest γ both do worse, what
   sets the MaxVio that remains at the best γ, and what γ trades off in a real training run.

`pytest exercises/test_experiment_01_moe_balance.py` checks that everything is filled in, that your
numbers lie in the range a correct experiment gives, and that the conclusion follows from them;
your teacher reads the explanation.

Points: 6 in all (PREDICTION 1, MEASURED 3, CONCLUSION 1, EXPLANATION 1)
"""

# ruff: noqa: F401, F841  (the names the stub leaves unused are for the lines you write)
import math

import jax
import jax.numpy as jnp

from minids.config import MoEConfig
from minids.experiments import run_experiment
from minids.moe import aux_free_bias_update, expert_load, router_scores, select_experts

SETTINGS = ("0", "0.001", "0.01", "0.1")  # γ, the bias update speed ("0": no balancing)


def measure(setting: str, seed: int, steps: int = 300) -> dict[str, float]:
    gamma = float(setting)
    E, K, T, D = 16, 2, 256, 32
    cfg = MoEConfig(n_routed_experts=E, experts_per_token=K)
    k_w, k_x = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(k_w, (D, E)) / math.sqrt(D)  # the frozen router
    skew = jnp.linspace(3.0, -3.0, E)  # expert 0 is favoured, expert 15 avoided

    def step(bias, x):
        # TODO: the scores of the tokens x (T, D): router_scores(x @ w + skew[None, :], "sigmoid");
        # the chosen experts: select_experts(scores, bias, cfg); their load: expert_load;
        # return (the updated bias: aux_free_bias_update(bias, load, gamma), this step's MaxVio).
        raise NotImplementedError

    tokens = jax.random.normal(k_x, (steps, T, D))
    _, max_vio = jax.lax.scan(step, jnp.zeros(E), tokens)
    return {"max_vio": float(jnp.mean(max_vio[-max(1, steps // 5) :]))}


PREDICTION = {
    "max_vio_without_balancing": None,  # a number
    "best_gamma": None,  # one of "0.001", "0.01", "0.1"
}
MEASURED = None  # paste the dict that running this file prints
CONCLUSION = None  # the γ with the lowest mean MaxVio, e.g. "0.01"
EXPLANATION = """
"""

if __name__ == "__main__":
    run_experiment(measure, SETTINGS)

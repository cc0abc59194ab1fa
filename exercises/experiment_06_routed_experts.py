"""Experiment 06: more routed experts at the same activated parameters (DeepSeekMoE; V3 §2.1.2)

DeepSeek-V3 activates 8 of 256 routed experts per token: the parameters grow with the number of
experts E, the compute per token does not (only K experts run). DeepSeekMoE's case for many small
experts is that more experts specialise better. Here the 2-layer model of notebook 01 gets a V3
style MoE in its second block (one shared expert, K = 2 routed experts of width 64, sigmoid
gates, aux-free balancing) with E = 2, 8 or 32 routed experts, trained 150 steps, three seeds.
At E = 2 every token uses both experts; at E = 32 the model holds 4x more parameters than the
dense one but activates the same number.

1. Predict (fill PREDICTION): whether the loss falls as E grows, and the smallest E within noise
   of the best E.
2. Measure: complete `measure` (two lines), then run `python exercises/experiment_06_routed_experts.py`
   (about three minutes on a laptop CPU: each E compiles once). Paste MEASURED below.
3. Conclude and explain: CONCLUSION is the smallest E whose mean loss is within noise (two standard
   errors of the difference) of the lowest mean loss. In EXPLANATION, compare the total and the
   activated parameters of the three models, say why 150 steps on this data may not reward more
   experts (how many tokens does each expert see?), and what V3 needs at scale to make them pay
   (balance, V3 §2.1.2; communication, §3.2).

`pytest exercises/test_experiment_06_routed_experts.py` checks what a machine can; your teacher
reads the explanation.

Points: 6 in all (PREDICTION 1, MEASURED 3, CONCLUSION 1, EXPLANATION 1)
"""

# ruff: noqa: F401, F821, F841  (the stub leaves names unused or undefined: your lines fill them)
from minids.config import MoEConfig, preset
from minids.experiments import run_experiment, train_and_validate

SETTINGS = ("E=2", "E=8", "E=32")
BASE = preset("tiny", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, ffn_dim=192)


def measure(setting: str, seed: int, steps: int = 150) -> dict[str, float]:
    E = int(setting.removeprefix("E="))
    # TODO: moe = MoEConfig(n_routed_experts=E, n_shared_experts=1, experts_per_token=2,
    # expert_ffn_dim=64, n_dense_layers=1, balancing="aux_free", bias_update_speed=1e-2);
    # result = train_and_validate(BASE.replace(moe=moe), seed, steps).
    raise NotImplementedError
    return {k: result[k] for k in ("val_loss", "params", "activated")}


PREDICTION = {
    "loss_falls_with_E": None,  # True or False
    "smallest_within_noise": None,  # one of the SETTINGS
}
MEASURED = None  # paste the dict that running this file prints
CONCLUSION = None  # the smallest E within noise of the best, e.g. "E=8"
EXPLANATION = """
"""

if __name__ == "__main__":
    run_experiment(measure, SETTINGS)

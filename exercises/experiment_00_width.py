"""Experiment 00: how much does a wider transformer buy in a fixed number of steps?

Notebook 00 trains one tiny transformer (RoPE, causal attention, SwiGLU) for 2000 steps. Here you
train three of them, 2 layers each, of width D = 16, 32 and 64 (4 heads of D/4, a SwiGLU of 3D),
for 150 steps of 32 examples, three seeds each, and compare their validation loss (the answer
tokens' cross-entropy on 256 held-out examples). The parameters grow about as D²; does the loss
follow?

1. Predict (fill PREDICTION): the validation loss at D = 16 and at D = 64, and the smallest width
   whose loss is within noise of D = 64's.
2. Measure: complete `measure` (two lines), then run `python exercises/experiment_00_width.py`
   (about two minutes on a laptop CPU). Paste the MEASURED dict it prints below.
3. Conclude and explain: CONCLUSION is the smallest width whose mean loss is within noise of
   D = 64's (noise: two standard errors of the difference of the two means,
   2 * sqrt(s1²/3 + s2²/3), the notebooks' rule), or "D=64" if none is. In EXPLANATION, say how the
   loss fell with the parameters, why 150 steps may favour or hurt a wider model, and what this
   short run cannot tell you about the loss after 2000 steps.

`pytest exercises/test_experiment_00_width.py` checks what a machine can; your teacher reads the
explanation.

Points: 6 in all (PREDICTION 1, MEASURED 3, CONCLUSION 1, EXPLANATION 1)
"""

# ruff: noqa: F401, F821, F841  (the stub leaves names unused or undefined: your lines fill them)
from minids.config import preset
from minids.experiments import run_experiment, train_and_validate

SETTINGS = ("D=16", "D=32", "D=64")


def measure(setting: str, seed: int, steps: int = 150) -> dict[str, float]:
    D = int(setting.removeprefix("D="))
    # TODO: cfg = the "tiny" preset with n_layers=2, n_heads=4, n_kv_heads=4, d_model=D,
    # head_dim=D // 4, ffn_dim=3 * D; result = train_and_validate(cfg, seed, steps).
    raise NotImplementedError
    return {"val_loss": result["val_loss"], "params": result["params"]}


PREDICTION = {
    "val_loss_at_D16": None,  # a number
    "val_loss_at_D64": None,  # a number
    "smallest_within_noise": None,  # one of the SETTINGS
}
MEASURED = None  # paste the dict that running this file prints
CONCLUSION = None  # the smallest width within noise of D=64, e.g. "D=32"
EXPLANATION = """
"""

if __name__ == "__main__":
    run_experiment(measure, SETTINGS)

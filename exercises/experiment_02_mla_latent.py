"""Experiment 02: how narrow can MLA's latent be? (DeepSeek-V2 §2.1.2; V3 §2.1.1)

MLA caches one latent c_KV of width C per token (plus a shared RoPE key of width R) instead of the
N * 2H numbers of MHA's keys and values, and rebuilds the keys and values from it with W_UK and
W_UV. V2 reports MLA at C = 4H doing better than MHA; notebook 02 trains MLA at C = 32 against MHA.
Here you look for the smallest C whose loss stays within noise of MHA's: MHA (cache 2NH = 128
numbers per token and layer), and MLA with C = 2, 8 and 32 (cache C + R = 10, 16 and 40), in the
2-layer model of notebooks 01 and 02, 150 steps, three seeds each.

1. Predict (fill PREDICTION): the smallest C within noise of MHA, and whether C = 2 is within noise.
2. Measure: complete `measure` (two lines), then run `python exercises/experiment_02_mla_latent.py`
   (about three minutes on a laptop CPU: each width compiles once). Paste MEASURED below.
3. Conclude and explain: CONCLUSION is the smallest MLA setting whose mean loss is within noise of
   MHA's (two standard errors of the difference, 2 * sqrt(s1²/3 + s2²/3)), or "none". In
   EXPLANATION, say what the latent must carry for 4 heads, why a model this small and this short a
   run may not need much of it, how large the cache saving is at your answer, and why "within
   noise" over 3 seeds is weaker evidence than "equal".

`pytest exercises/test_experiment_02_mla_latent.py` checks what a machine can; your teacher reads
the explanation.

Points: 6 in all (PREDICTION 1, MEASURED 3, CONCLUSION 1, EXPLANATION 1)
"""

# ruff: noqa: F401, F841  (the names the stub leaves unused are for the lines you write)
from minids.config import preset
from minids.experiments import run_experiment, train_and_validate
from minids.mla import MLAConfig

SETTINGS = ("MHA", "C=2", "C=8", "C=32")
BASE = preset("tiny", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, ffn_dim=192)


def measure(setting: str, seed: int, steps: int = 150) -> dict[str, float]:
    if setting == "MHA":
        cfg = BASE
    else:
        C = int(setting.removeprefix("C="))
        # TODO: cfg = BASE with mla=MLAConfig(kv_lora_rank=C, qk_nope_head_dim=16,
        # qk_rope_head_dim=8, v_head_dim=16) (ModelConfig.replace).
        raise NotImplementedError
    # TODO: train it with train_and_validate(cfg, seed, steps) and return its "val_loss".
    raise NotImplementedError


PREDICTION = {
    "smallest_within_noise": None,  # one of "C=2", "C=8", "C=32", "none"
    "c2_within_noise": None,  # True or False
}
MEASURED = None  # paste the dict that running this file prints
CONCLUSION = None  # the smallest MLA setting within noise of MHA, e.g. "C=8", or "none"
EXPLANATION = """
"""

if __name__ == "__main__":
    run_experiment(measure, SETTINGS)

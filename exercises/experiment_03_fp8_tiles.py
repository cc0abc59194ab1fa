"""Experiment 03: which FP8 tile keeps an outlier from spoiling its neighbours? (DeepSeek-V3 §3.3.2)

An FP8 number (E4M3) has 3 mantissa bits and a range of ±448, so a tensor is divided by a scale
(its max |x| / 448) before the cast. One large value sets the scale of everything that shares it,
and the small values of that group fall towards FP8's subnormals, where few bits are left. LLM
activations have such outliers, in a few channels. V3 gives every 1 x 128 tile of an activation its
own scale (128 x 128 blocks for weights); notebook 03 compares that with one scale per tensor.

Here the activation is 64 x 1024 Gaussian values in which 4 channels (columns) are 30,000 times
larger (`minids.experiments.outlier_activation`, an extreme but reported size of such outliers).
The error is the relative RMS error of quantize -> dequantize on the ordinary channels, and the
overhead is the bytes of float32 scales per FP8 byte.

1. Predict (fill PREDICTION): the tile (tensor, 1x1024, 1x128, 1x32 or 1x8) with the smallest
   error, and how many times larger the per-tensor error is than the 1x128 one.
2. Measure: complete `measure` (three lines), then run `python exercises/experiment_03_fp8_tiles.py`
   (seconds). Paste the MEASURED dict it prints below.
3. Conclude and explain: CONCLUSION is the tile with the smallest mean error. In EXPLANATION, say
   why smaller tiles help here, why the error stops falling near 2% whatever the tile, and why V3
   uses 1 x 128 rather than the tile with the smallest error (look at the overhead, and at what
   the GEMM does every 128 elements of K).

`pytest exercises/test_experiment_03_fp8_tiles.py` checks what a machine can; your teacher reads
the explanation.

Points: 6 in all (PREDICTION 1, MEASURED 3, CONCLUSION 1, EXPLANATION 1)
"""

# ruff: noqa: F401, F821, F841  (the stub leaves names unused or undefined: your lines fill them)
import numpy as np

from minids.experiments import outlier_activation, run_experiment
from minids.fp8 import dequantize, quantize

SETTINGS = ("tensor", "1x1024", "1x128", "1x32", "1x8")


def measure(setting: str, seed: int) -> dict[str, float]:
    x, outliers = outlier_activation(seed)  # (64, 1024) and the (1024,) mask of outlier channels
    block = None if setting == "tensor" else (1, int(setting.removeprefix("1x")))
    # TODO: back = x quantized to "e4m3" with this block and dequantized again (minids.fp8);
    # ordinary = np.asarray(x)[:, ~outliers]; error = the same columns of back minus ordinary.
    raise NotImplementedError
    overhead = 4.0 / x.size if block is None else 4.0 / (block[0] * block[1])
    return {
        "rel_error": float(np.sqrt(np.mean(error**2)) / np.sqrt(np.mean(ordinary**2))),
        "scale_overhead": overhead,
    }


PREDICTION = {
    "best_tile": None,  # one of the SETTINGS
    "tensor_over_1x128": None,  # a number: error per tensor / error per 1x128 tile
}
MEASURED = None  # paste the dict that running this file prints
CONCLUSION = None  # the tile with the smallest mean error, e.g. "1x32"
EXPLANATION = """
"""

if __name__ == "__main__":
    run_experiment(measure, SETTINGS)

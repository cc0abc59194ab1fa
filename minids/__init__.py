"""minids: learn DeepSeek-V3 and DeepSeek-R1 by building them, in JAX + Flax NNX.

The public names, one technique per module (see README.md for the map):

    from minids import preset, Transformer, fit, generate_text

(`generate` itself stays at `minids.generate.generate`: re-exported here it would hide the module.)
"""

from minids.config import (
    DSAConfig,
    FP8Config,
    MLAConfig,
    ModelConfig,
    MoEConfig,
    MTPConfig,
    YaRNConfig,
    preset,
)
from minids.data import TASKS, CharTokenizer, load_local, load_split
from minids.fp8 import Fp8Linear
from minids.generate import generate_speculative, generate_text, task_accuracy
from minids.mla import MLA
from minids.model import Transformer, count_params
from minids.moe import MoE
from minids.train import TRAIN_PRESETS, TrainConfig, fit, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "MLA",
    "TASKS",
    "TRAIN_PRESETS",
    "CharTokenizer",
    "DSAConfig",
    "FP8Config",
    "Fp8Linear",
    "MLAConfig",
    "ModelConfig",
    "MoE",
    "MoEConfig",
    "MTPConfig",
    "TrainConfig",
    "Transformer",
    "YaRNConfig",
    "count_params",
    "fit",
    "generate_speculative",
    "generate_text",
    "load_checkpoint",
    "load_local",
    "load_split",
    "preset",
    "save_checkpoint",
    "task_accuracy",
]

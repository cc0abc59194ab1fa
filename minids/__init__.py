"""minids: learn DeepSeek-V3 and DeepSeek-R1 by building them, in JAX + Flax NNX.

The public names, one technique per module (see README.md for the map):

    from minids import preset, Transformer, fit, generate_text

(`generate` itself stays at `minids.generate.generate`: re-exported here it would hide the module.)
"""

import importlib

# Each public name and the module that defines it. They are imported on first use (PEP 562), so
# `import minids`, or a small piece such as `minids.grading`, does not start JAX and Flax.
_WHERE = {
    "DSAConfig": "minids.config",
    "FP8Config": "minids.config",
    "MLAConfig": "minids.config",
    "ModelConfig": "minids.config",
    "MoEConfig": "minids.config",
    "MTPConfig": "minids.config",
    "YaRNConfig": "minids.config",
    "preset": "minids.config",
    "TASKS": "minids.data",
    "CharTokenizer": "minids.data",
    "load_local": "minids.data",
    "load_split": "minids.data",
    "Fp8Linear": "minids.fp8",
    "generate_speculative": "minids.generate",
    "generate_text": "minids.generate",
    "task_accuracy": "minids.generate",
    "MLA": "minids.mla",
    "Transformer": "minids.model",
    "count_params": "minids.model",
    "MoE": "minids.moe",
    "TRAIN_PRESETS": "minids.train",
    "TrainConfig": "minids.train",
    "fit": "minids.train",
    "load_checkpoint": "minids.train",
    "save_checkpoint": "minids.train",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'minids' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__version__ = "0.1.0"

__all__ = sorted(_WHERE)

"""Checkpoints you can trust and runs you can stop: atomic saves, the last few kept, checked loads.

A long run should lose at most a few minutes of work to a crash, a Ctrl-C or a machine that goes away
(Hugging Face Trainer's `save_steps`, PyTorch Lightning's fault-tolerant resume). Three pieces:

- **A folder of checkpoints, one per step**, written by orbax's `CheckpointManager`:

      runs/tiny/checkpoint/        the folder `fit(ckpt_dir=...)` and `train --out` use
        1500/  2000/  2500/        the last `keep` steps (older ones are deleted)
          params/  opt/            arrays (orbax): the model's state; the optimizer's, when resumable
          config/  meta/           JSON: the ModelConfig; step, run config, metrics, checksums

  Each step is written into a temporary folder and renamed into place only when complete, so a
  process killed in the middle of a save leaves the previous steps as they were (and the manager
  clears the half-written folder the next time it opens). `latest step` is simply the highest
  complete one. Checkpoints written by older minids (one folder with `config.json`, `meta.json`
  and `state/`) still load.
- **Checked loads.** `meta` carries a SHA-256 checksum of each array item's values, computed before
  the save and compared after every restore, so a file whose bytes were overwritten is detected
  rather than loaded. Whatever goes wrong while loading (a missing folder, a truncated file, cut
  JSON, arrays of the wrong shape) becomes one `CheckpointError` (a `ValueError`) that names the
  checkpoint and says what is wrong, instead of a long orbax/tensorstore traceback. Inference
  restores only `params`: damage in the optimizer's moments never blocks `generate`.
- **Safe stops** (`stop_requests`). While a run is going, the first SIGINT (Ctrl-C) or SIGTERM
  only asks the loop to stop: it finishes the current step, writes a checkpoint and raises
  `Interrupted`, whose message says how to resume. A second Ctrl-C stops at once. The handlers are
  installed only for the duration of the run and restored afterwards.

Where a checkpoint can be found (`resolve`): a step folder, a folder of steps (its latest step), a
run folder holding `checkpoint/`, or an old single-folder checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from minids.config import ModelConfig
from minids.model import Transformer

KEEP = 3  # checkpoints a folder keeps by default: the latest and two before it
_ITEMS = ("params", "opt", "config", "meta")
_LEGACY_FILES = ("config.json", "meta.json")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or damaged; the message names the folder."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint (`checkpoint`, at `step`).

    A `KeyboardInterrupt`, so a notebook or a script that already handles Ctrl-C keeps doing so.
    `history` holds the metrics up to the stop."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None, history: Any = None):
        self.signal_name, self.step, self.checkpoint, self.history = (
            signal_name,
            step,
            checkpoint,
            history,
        )
        where = f"checkpoint {checkpoint} holds step {step}" if checkpoint else "nothing was saved"
        super().__init__(f"{signal_name}: stopped after step {step}; {where}")


# ------------------------------------------------------------------------------- finding one


def _steps(folder: Path) -> list[int]:
    """The complete steps of a checkpoint folder (half-written ones have a tmp suffix)."""
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "meta").is_dir()
    )


def _is_legacy(folder: Path) -> bool:
    return all((folder / name).exists() for name in _LEGACY_FILES)


def latest_step(folder: Path | str) -> int | None:
    """The highest complete step saved in a checkpoint folder, or None."""
    steps = _steps(Path(folder))
    return steps[-1] if steps else None


def resolve(path: Path | str) -> Path:
    """The one checkpoint that `path` names: a step folder (with `meta/`), the latest step of a
    folder of steps, the same inside a run folder's `checkpoint/`, or an old single folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{str(path)!r} is not a minids checkpoint: it does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is not a minids checkpoint: it is a file, not a folder"
        )
    if (path / "meta").is_dir() and (path / "config").is_dir():
        return path
    steps = _steps(path)
    if steps:
        return path / str(steps[-1])
    if _is_legacy(path):
        return path
    if (path / "checkpoint").is_dir():  # a run folder, as `train --out` writes it
        return resolve(path / "checkpoint")
    raise CheckpointError(
        f"{str(path)!r} is not a minids checkpoint (no step folders, no config.json / meta.json, "
        "no checkpoint/ inside)"
    )


def holds_checkpoint(path: Path | str) -> bool:
    """True when `resolve(path)` would find a checkpoint there."""
    try:
        resolve(path)
    except CheckpointError:
        return False
    return True


# ------------------------------------------------------------------------------------ reading


def _damaged(where: Path, what: str, err: BaseException | None = None) -> CheckpointError:
    detail = ""
    if err is not None:  # orbax and tensorstore wrap their errors; the first line says enough
        text = str(err).split("See full TensorStore details")[0]  # the rest is a pybind repr
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        detail = (
            f" ({type(err).__name__}: {lines[0][:200].rstrip('. ') if lines else 'no message'})"
        )
    return CheckpointError(f"checkpoint {where} is incomplete or damaged: {what}{detail}")


def _read_json(path: Path, what: str, where: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _damaged(where, f"{what} file {path.name} is missing")
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(where, f"{what} file {path} is not valid JSON", err) from None
    if not isinstance(value, dict):
        raise _damaged(where, f"{what} file {path} holds {type(value).__name__}, not an object")
    return value


def _read_item_json(step_dir: Path, item: str) -> dict[str, Any]:
    folder = step_dir / item
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".txt")]
    if not files:
        raise _damaged(step_dir, f"{item}/ holds no JSON file")
    return _read_json(files[0], item, step_dir)


def _read(path: Path | str) -> tuple[Path, dict[str, Any], ModelConfig]:
    """(the resolved checkpoint, its meta, its ModelConfig), each checked."""
    where = resolve(path)
    if _is_legacy(where) and not (where / "meta").is_dir():
        meta = _read_json(where / "meta.json", "meta", where)
        raw_cfg = _read_json(where / "config.json", "config", where)
    else:
        meta, raw_cfg = _read_item_json(where, "meta"), _read_item_json(where, "config")
    for key, kind in (("step", int), ("has_optimizer", bool)):
        if not isinstance(meta.get(key), kind):
            raise _damaged(where, f"meta has no {kind.__name__} {key!r} field")
    try:
        cfg = ModelConfig.from_dict(raw_cfg)
    except (TypeError, ValueError) as err:
        raise _damaged(where, "its config is not a valid ModelConfig", err) from None
    return where, meta, cfg


def read_meta(path: Path | str) -> dict[str, Any]:
    """The metadata of the checkpoint at `path`: step, run config, history, has_optimizer."""
    return _read(path)[1]


def read_config(path: Path | str) -> ModelConfig:
    """The ModelConfig of the checkpoint at `path`."""
    return _read(path)[2]


def _digest(state: Any) -> str:
    """SHA-256 of every array's dtype, shape and bytes, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arr = np.asarray(leaf)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _restore_item(where: Path, item: str, target: Any, digests: dict[str, str]) -> Any:
    import orbax.checkpoint as ocp

    folder = where / item
    if not folder.is_dir():
        raise _damaged(where, f"its {item}/ folder is missing")
    handler = ocp.StandardCheckpointHandler()  # the item alone, as the manager wrote it
    try:
        saved = handler.metadata(folder)
        saved_shapes = sorted(tuple(m.shape) for m in jax.tree.leaves(saved, is_leaf=_is_array))
    except Exception as err:  # orbax raises plain Exception for a missing or cut file
        raise _damaged(where, f"cannot read the metadata of {item}/", err) from None
    wanted = sorted(tuple(np.shape(leaf)) for leaf in jax.tree.leaves(target))
    if saved_shapes != wanted:
        pairs = [(a, b) for a, b in zip(saved_shapes, wanted, strict=False) if a != b]
        first = f"e.g. {pairs[0][0]} saved where {pairs[0][1]} is expected" if pairs else ""
        raise _damaged(
            where,
            f"the arrays in {item}/ do not have the shapes its config gives ({len(saved_shapes)} "
            f"saved, {len(wanted)} expected; {first})",
        )
    try:
        restored = handler.restore(folder, args=ocp.args.StandardRestore(target))
    except Exception as err:
        raise _damaged(where, f"cannot read the arrays in {item}/", err) from None
    expected = digests.get(item)
    if expected is not None and _digest(restored) != expected:
        raise _damaged(
            where, f"the arrays in {item}/ do not match their checksum (the files were changed)"
        )
    return restored


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def restore_into(
    path: Path | str,
    model: Transformer,
    optimizer: nnx.Optimizer | None = None,
    *,
    extras: dict[str, nnx.Module] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint's parameters into `model` (and, given them, the optimizer's state and the
    `extras` that `save_checkpoint` saved); returns its metadata. Only what is asked for is read:
    without an optimizer, `opt/` is never opened."""
    where, meta, saved_cfg = _read(path)
    if saved_cfg != model.cfg:
        raise CheckpointError(
            f"checkpoint {str(where)!r} was saved from a different ModelConfig: {saved_cfg}"
        )
    if optimizer is not None and not meta["has_optimizer"]:
        raise CheckpointError(f"checkpoint {str(where)!r} holds no optimizer state to resume from")
    digests = meta.get("checksums") or {}
    if _is_legacy(where) and not (where / "params").is_dir():
        restored = _restore_legacy(where, model, optimizer)
    else:
        restored = {"params": _restore_item(where, "params", nnx.state(model), digests)}
        if optimizer is not None:
            restored["opt"] = _restore_item(where, "opt", nnx.state(optimizer), digests)
        for name, module in (extras or {}).items():
            restored[name] = _restore_item(where, name, nnx.state(module), digests)
    nnx.update(model, restored["params"])
    if optimizer is not None:
        nnx.update(optimizer, restored["opt"])
    for name, module in (extras or {}).items():
        nnx.update(module, restored[name])
    return meta


def _restore_legacy(where: Path, model: Transformer, optimizer: nnx.Optimizer | None) -> dict:
    """A checkpoint of the old layout: model and optimizer in one `state/` item."""
    import orbax.checkpoint as ocp

    target = {"model": nnx.state(model)}
    if optimizer is not None and read_meta(where)["has_optimizer"]:
        target["opt"] = nnx.state(optimizer)
    try:  # partial: the parameters alone, when no optimizer asks for its moments
        restored = ocp.PyTreeCheckpointer().restore(
            where / "state",
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
    except Exception as err:
        raise _damaged(where, "cannot read the arrays in state/", err) from None
    return {"params": restored["model"], "opt": restored.get("opt")}


def load_checkpoint(path: Path | str) -> tuple[Transformer, dict[str, Any]]:
    """Rebuild the model saved at `path` from its parameters alone; returns (model, metadata)."""
    model = Transformer(read_config(path))
    return model, restore_into(path, model)


# ------------------------------------------------------------------------------------ writing


def _manager(folder: Path, keep: int):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=False,  # a save is done when `save` returns: safe to exit
        cleanup_tmp_directories=True,  # clears what a killed save left half-written
    )
    return ocp.CheckpointManager(folder, options=options)


def save_checkpoint(
    path: Path | str,
    model: Transformer,
    optimizer: nnx.Optimizer | None = None,
    *,
    step: int = 0,
    history: Any = None,  # a History, or any dataclass of metric lists (GRPOHistory)
    train_cfg: Any = None,  # the run's config dataclass: a TrainConfig, or a GRPOConfig
    keep: int = KEEP,
    extras: dict[str, nnx.Module] | None = None,
) -> Path:
    """Save `step` into the checkpoint folder `path`, atomically, keeping the last `keep` steps.

    `extras` names further modules whose state a resume needs (GRPO's reference model). Returns
    the step's folder. Saving a step that is already there replaces it."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file; a checkpoint needs a folder")
    legacy = path.is_dir() and _is_legacy(path)
    if path.is_dir() and not (legacy or _steps(path) or not _foreign(path)):
        # Saving deletes old steps: never let that touch a folder that is not a checkpoint.
        raise ValueError(
            f"{str(path)!r} exists and is not a minids checkpoint; refusing to replace it"
        )
    state = {"params": nnx.state(model)}
    if optimizer is not None:
        state["opt"] = nnx.state(optimizer)
    for name, module in (extras or {}).items():
        if name in _ITEMS:
            raise ValueError(f"extras may not be named {name!r}: {_ITEMS} are taken")
        state[name] = nnx.state(module)
    meta = {
        "step": step,
        "train_config": dataclasses.asdict(train_cfg) if train_cfg else None,
        "history": history.to_dict() if history else None,
        "has_optimizer": optimizer is not None,
        "checksums": {name: _digest(value) for name, value in state.items()},
    }
    items = {name: ocp.args.StandardSave(value) for name, value in state.items()}
    items["config"] = ocp.args.JsonSave(model.cfg.to_dict())
    items["meta"] = ocp.args.JsonSave(meta)
    with _manager(path, keep) as manager:
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        manager.wait_until_finished()
    if legacy:  # the new layout now holds the run: retire the old single-folder files
        for name in _LEGACY_FILES:
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "state", ignore_errors=True)
    return path / str(step)


def _foreign(folder: Path) -> bool:
    """True when `folder` holds anything a checkpoint folder would not (orbax's own leftovers
    from an interrupted save are allowed)."""
    return any(".orbax-checkpoint-tmp" not in p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------ when to save


@dataclasses.dataclass
class SaveSchedule:
    """Save every `every_steps` steps (0: never by count) or when `every_minutes` have passed since
    the last save (0: never by time), whichever comes first."""

    every_steps: int
    every_minutes: float
    clock: Any = None  # time.monotonic; a test may pass its own
    _last: float = 0.0

    def __post_init__(self) -> None:
        import time

        self.clock = self.clock or time.monotonic
        self._last = self.clock()

    def due(self, done: int) -> bool:
        by_steps = bool(self.every_steps) and done % self.every_steps == 0
        by_time = bool(self.every_minutes) and self.clock() - self._last >= 60 * self.every_minutes
        return by_steps or by_time

    def saved(self) -> None:
        self._last = self.clock()


# ----------------------------------------------------------------------------------- stopping


@dataclasses.dataclass
class StopRequest:
    """Set by the first SIGINT/SIGTERM during a run: the loop checks `signal_name` after each step."""

    signal_name: str | None = None


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[StopRequest]:
    """While the block runs, SIGINT and SIGTERM ask to stop after the current step; a second SIGINT
    stops at once (KeyboardInterrupt). The previous handlers are put back on leaving.

    Signals reach only the main thread: elsewhere (or with `enabled=False`) nothing is installed and
    Ctrl-C behaves as usual."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if request.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, save nothing
        request.signal_name = name
        print(
            f"\n{name}: finishing this step, then saving a checkpoint "
            "(press Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

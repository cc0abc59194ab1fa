"""Training: a jitted step, evaluation, `fit()`, atomic checkpoints that resume exactly, a NaN guard.

The loop is the textbook one. Each step takes a batch, computes the mean cross-entropy of the answer
tokens, differentiates it with `nnx.value_and_grad`, clips the global gradient norm and applies AdamW
with a linear warmup then cosine decay of the learning rate (DeepSeek-V3 §4.2 uses AdamW with
beta1 0.9, beta2 0.95, weight decay 0.1 and clipping at 1.0; minids takes the same defaults).

Resuming gives the same numbers as not stopping: a step's batch is a function of (seed, step) alone
(`data.batch_indices`), and a checkpoint holds the parameters, the optimizer's moments and step count
(the learning-rate schedule reads it) and the metrics so far.

Checkpoints (`minids.checkpoint`): given a checkpoint folder, `fit` saves every `ckpt_every` steps
or `ckpt_minutes` minutes, keeps the last `ckpt_keep`, each written atomically, and on SIGINT/SIGTERM
finishes the step, saves and raises `Interrupted`. Arrays are stored by orbax; config and metadata
as JSON (no pickle).

Multi-token prediction (`cfg.mtp`, minids/mtp.py): the loss adds lambda / D times the D modules'
losses (V3 eq. 25); `fit` hands each step its lambda (`MTPConfig.weight_at`: 0.3, then 0.1 after
`switch_at` of the steps), as a number in the batch, so the schedule needs no recompilation.

The NaN guard checks every step's loss and gradient norm and stops with `FloatingPointError` naming
the step, rather than training on silently.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, no_type_check

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from minids.checkpoint import (  # noqa: F401  (re-exported: minids.train was their first home)
    KEEP,
    CheckpointError,
    Interrupted,
    SaveSchedule,
    holds_checkpoint,
    load_checkpoint,
    read_meta,
    restore_into,
    save_checkpoint,
    stop_requests,
)
from minids.config import check_int, check_number
from minids.data import CharTokenizer, batch_indices, check_vocab, encode_examples
from minids.model import Transformer
from minids.mtp import masked_cross_entropy, mtp_depth_losses, mtp_loss


@no_type_check  # validated in __post_init__ (minids.config's check_* functions)
@dataclass(frozen=True)
class TrainConfig:
    """One training run's recipe; validated when made. Each field's metadata holds its help text
    (the CLI's options read their defaults and help from here)."""

    steps: int = field(default=2000, metadata={"help": "training steps"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "steps of linear warmup from 0 to lr"})
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "the cosine decays to lr * min_lr_ratio"}
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay (matrices only, not norms)"}
    )
    b1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    b2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradients' global norm"})
    eval_every: int = field(
        default=250, metadata={"help": "validate every N steps (0: only at the end)"}
    )
    eval_examples: int = field(default=512, metadata={"help": "validation examples per evaluation"})
    ckpt_every: int = field(
        default=500,
        metadata={"help": "with a checkpoint folder: save every N steps (0: not by count)"},
    )
    ckpt_minutes: float = field(
        default=5.0,
        metadata={
            "help": "with a checkpoint folder: also save when N minutes have passed (0: not by time)"
        },
    )
    ckpt_keep: int = field(
        default=KEEP, metadata={"help": "checkpoints kept: the latest and those just before it"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the batch order"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "ckpt_every", "seed", "eval_examples"):
            check_int(name, getattr(self, name), 0)
        check_number("lr", self.lr, 0.0, 1.0, low_open=True, high_open=True)
        check_number("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        for name in ("weight_decay", "b1", "b2"):
            check_number(name, getattr(self, name), 0.0, 1.0, high_open=True)
        check_number("grad_clip", self.grad_clip, 0.0, low_open=True)
        check_number("ckpt_minutes", self.ckpt_minutes, 0.0)
        check_int("ckpt_keep", self.ckpt_keep, 1)


@dataclass
class History:
    """Metrics by step: training loss every step, validation metrics at each evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_token_acc: list[float] = field(default_factory=list)
    # MoE models only, every step: MaxVio and dropped fraction averaged over MoE layers, aux loss.
    max_vio: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    dropped_frac: list[float] = field(default_factory=list)
    # MTP models only, every step: the mean of the D modules' cross-entropies (before lambda).
    mtp_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**d)


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


# The fields of a TrainConfig that the optimizer reads; the others (seed, batch size, evaluation)
# leave it unchanged.
OPTIMIZER_FIELDS = (
    "steps",
    "lr",
    "warmup_steps",
    "min_lr_ratio",
    "weight_decay",
    "b1",
    "b2",
    "grad_clip",
)


def make_optimizer(model: nnx.Module, cfg: TrainConfig) -> nnx.Optimizer:
    """AdamW (decoupled weight decay on matrices, not norms) after global-norm gradient clipping."""
    recipe = dataclasses.replace(TrainConfig(), **{f: getattr(cfg, f) for f in OPTIMIZER_FIELDS})
    return nnx.Optimizer(model, _transform(recipe), wrt=nnx.Param)


@functools.cache
def _transform(cfg: TrainConfig) -> optax.GradientTransformation:
    # One transform object per recipe: nnx.jit compiles the optimizer's transform into the step,
    # so two runs that differ only in seed (or batch order) reuse one compiled train step.
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            lr_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            weight_decay=cfg.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        ),
    )


def loss_and_aux(model: Transformer, batch: dict[str, jax.Array]):
    """(mean answer-token cross-entropy + MoE balance loss [+ MTP loss], routing statistics)."""
    if model.cfg.mtp is not None:
        return _loss_and_aux_mtp(model, batch)
    logits, aux = model.forward_with_aux(batch["inputs"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"]
    ce = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return ce + aux.get("aux_loss", 0.0), {**aux, "ce": ce}


def _loss_and_aux_mtp(model: Transformer, batch: dict[str, jax.Array]):
    """The main loss plus lambda / D times the MTP modules' losses (V3 eq. 25).

    lambda is `batch["mtp_weight"]` when the batch carries it (`fit` does), else the config's first
    value. The MoE statistics of the modules' blocks follow the main model's (`mtp_load` etc.).
    """
    hidden, aux = model.final_hidden(batch["inputs"])
    ce = masked_cross_entropy(model.output_head(hidden), batch["targets"], batch["loss_mask"])
    depth_losses, mtp_stats = mtp_depth_losses(model, hidden, batch)
    weight = batch.get("mtp_weight", model.cfg.mtp.loss_weight)
    loss = ce + aux.get("aux_loss", 0.0) + mtp_loss(depth_losses, weight)
    aux = {**aux, "ce": ce, "mtp_loss": jnp.mean(depth_losses)}
    if mtp_stats:
        loss = loss + sum(s["aux_loss"] for s in mtp_stats)
        aux["mtp_load"] = jnp.stack([s["load"] for s in mtp_stats])
    return loss, aux


def loss_fn(model: Transformer, batch: dict[str, jax.Array]) -> jax.Array:
    """The training loss: mean cross-entropy over the tokens where loss_mask is 1 (+ MoE aux loss)."""
    return loss_and_aux(model, batch)[0]


def update_moe_biases(model: Transformer, aux: dict[str, jax.Array]) -> None:
    """DeepSeek-V3's aux-loss-free balancing (eq. 16): after an optimiser step, outside the
    gradient, nudge each MoE layer's selection bias by that step's expert load."""
    for layer, load in zip(model.moe_layers(), aux.get("load", ()), strict=False):
        layer.update_bias(load)
    if "mtp_load" in aux:  # the MTP modules' MoE blocks balance their own experts
        for module, load in zip(model.mtp, aux["mtp_load"], strict=True):
            module.block.ffn.update_bias(load)


@nnx.jit
def train_step(model: Transformer, optimizer: nnx.Optimizer, batch: dict[str, jax.Array]):
    (loss, aux), grads = nnx.value_and_grad(loss_and_aux, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    update_moe_biases(model, aux)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    if "load" in aux:
        metrics.update(
            ce=aux["ce"],
            aux_loss=aux["aux_loss"],
            max_vio=jnp.mean(aux["max_vio"]),
            dropped_frac=jnp.mean(aux["dropped_frac"]),
        )
    if "mtp_loss" in aux:
        metrics.update(ce=aux["ce"], mtp_loss=aux["mtp_loss"])
    return metrics


@nnx.jit
def eval_step(model: Transformer, batch: dict[str, jax.Array]):
    """Summed loss, correct tokens and token count over the masked tokens of a batch."""
    logits = model(batch["inputs"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"]
    correct = (jnp.argmax(logits, -1) == batch["targets"]) * mask
    return jnp.sum(ce * mask), jnp.sum(correct), jnp.sum(mask)


def evaluate(
    model: Transformer, arrays: dict[str, np.ndarray], batch_size: int = 256
) -> dict[str, float]:
    """Token-level loss and accuracy (teacher forced) over encoded examples."""
    total_loss = total_correct = total = 0.0
    n = len(arrays["inputs"])
    for start in range(0, n, batch_size):
        batch = {k: jnp.asarray(v[start : start + batch_size]) for k, v in arrays.items()}
        loss, correct, count = eval_step(model, batch)
        total_loss, total_correct, total = (
            total_loss + float(loss),
            total_correct + float(correct),
            total + float(count),
        )
    return {"loss": total_loss / max(total, 1), "token_acc": total_correct / max(total, 1)}


# ------------------------------------------------------------------------------------------- fit


def fit(
    model: Transformer,
    train_examples: Sequence[dict[str, str]],
    val_examples: Sequence[dict[str, str]] | None = None,
    cfg: TrainConfig = TrainConfig(),
    *,
    ckpt_dir: Path | str | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    tokenizer: CharTokenizer | None = None,
    step_fn=None,
) -> History:
    """Train `model` in place on (prompt, answer) examples and return the metrics history.

    `ckpt_dir`: a checkpoint folder (`minids.checkpoint`). Training saves there every
    `cfg.ckpt_every` steps or `cfg.ckpt_minutes` minutes, whichever comes first, keeps the last
    `cfg.ckpt_keep`, and saves at the end; SIGINT/SIGTERM then finish the step, save and raise
    `Interrupted`. Without `ckpt_dir` (a notebook training in memory) nothing is saved and Ctrl-C
    interrupts as usual. With `resume=True`, continue from the latest checkpoint there (the
    model's parameters are replaced by the saved ones).
    `stop_after`: stop after that many steps of this call (to simulate an interruption).
    `step_fn(model, optimizer, batch) -> metrics` replaces `train_step` (logit distillation uses
    it); it must return at least "loss" and "grad_norm".
    """
    step_fn = train_step if step_fn is None else step_fn
    tokenizer = tokenizer or CharTokenizer()
    seq_len = model.cfg.max_seq_len
    check_vocab(model.cfg.vocab_size, tokenizer)
    if not train_examples:
        raise ValueError("train_examples is empty: nothing to train on")
    if cfg.batch_size > len(train_examples):
        raise ValueError(
            f"the training set ({len(train_examples)} examples) is smaller than one batch "
            f"(batch_size {cfg.batch_size}); lower batch_size or add data"
        )
    train = encode_examples(train_examples, tokenizer, seq_len)
    use_val = bool(val_examples) and cfg.eval_examples > 0  # eval_examples=0: no evaluation at all
    val = (
        encode_examples(list(val_examples)[: cfg.eval_examples], tokenizer, seq_len)
        if use_val
        else None
    )
    optimizer = make_optimizer(model, cfg)
    history, start = History(), 0
    if resume:
        if ckpt_dir is None or not holds_checkpoint(ckpt_dir):
            raise ValueError(
                f"resume=True needs a ckpt_dir that holds a checkpoint, got {ckpt_dir!r}"
            )
        meta = restore_into(ckpt_dir, model, optimizer)
        start, history = meta["step"], History.from_dict(meta["history"])

    def run_eval(step):
        if val is not None:
            m = evaluate(model, val)
            history.val_step.append(step)
            history.val_loss.append(m["loss"])
            history.val_token_acc.append(m["token_acc"])

    def save(step):
        save_checkpoint(
            ckpt_dir,
            model,
            optimizer,
            step=step,
            history=history,
            train_cfg=cfg,
            keep=cfg.ckpt_keep,
        )
        schedule.saved()

    schedule = SaveSchedule(cfg.ckpt_every, cfg.ckpt_minutes)
    lr_at = lr_schedule(cfg)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = progress_bar(range(start, end), initial=start, total=cfg.steps, disable=not progress)
    t0 = time.perf_counter()
    with stop_requests(enabled=ckpt_dir is not None) as stop:
        for step in bar:
            idx = batch_indices(len(train["inputs"]), cfg.batch_size, step, cfg.seed)
            batch = {k: jnp.asarray(v[idx]) for k, v in train.items()}
            if model.cfg.mtp is not None:  # this step's lambda (V3: 0.3, then 0.1)
                batch["mtp_weight"] = jnp.float32(model.cfg.mtp.weight_at(step, cfg.steps))
            metrics = step_fn(model, optimizer, batch)
            loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise FloatingPointError(
                    f"non-finite training metrics at step {step}: loss={loss}, "
                    f"grad_norm={grad_norm}. Try a lower lr, a smaller warmup-free start, or "
                    "float32 compute"
                )
            history.step.append(step)
            history.loss.append(loss)
            history.grad_norm.append(grad_norm)
            history.lr.append(float(lr_at(step)))
            for name in ("max_vio", "aux_loss", "dropped_frac", "mtp_loss"):
                if name in metrics:
                    getattr(history, name).append(float(metrics[name]))
            done = step + 1
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                run_eval(done)
            if done % 10 == 0 or done == end:
                postfix = {"loss": f"{loss:.3f}"}
                if history.val_loss:
                    postfix["val"] = f"{history.val_loss[-1]:.3f}"
                bar.set_postfix(postfix)
            if stop.signal_name:  # SIGINT/SIGTERM: this step is done; save it and stop
                bar.close()
                history.seconds += time.perf_counter() - t0
                save(done)
                raise Interrupted(stop.signal_name, done, Path(ckpt_dir), history)
            if ckpt_dir is not None and done < end and schedule.due(done):
                save(done)
    history.seconds += time.perf_counter() - t0
    if end == cfg.steps and start < end:  # resuming a finished run must not evaluate it twice
        run_eval(cfg.steps)
    if ckpt_dir is not None and start < end:
        save(end)
    return history


def progress_bar(iterable, **kwargs):
    """A tqdm progress bar over `iterable` (`disable=True` hides it); `fit` and `train_grpo` use it."""
    from tqdm.auto import tqdm  # a widget in Jupyter, a text bar in a terminal

    return tqdm(iterable, **kwargs)


# The training recipe that goes with each model preset (the notebooks and `python -m minids train`).
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(steps=2000, batch_size=64, lr=3e-3, warmup_steps=100, eval_every=250),
    "small": TrainConfig(steps=2000, batch_size=32, lr=1e-3, warmup_steps=200, eval_every=250),
    "tiny_v3": TrainConfig(steps=2000, batch_size=64, lr=3e-3, warmup_steps=100, eval_every=250),
}

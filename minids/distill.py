"""Distillation, R1 style: a small student learns from a stronger teacher.

DeepSeek-R1 §2.4 distilled R1 into small dense models (Qwen2.5 1.5B-32B, Llama 8B/70B) by the
simplest means there is: each student was fine-tuned with plain next-token cross-entropy, no RL,
on about 800k samples curated for R1's own third training stage (§2.3.3). About 600k of them
are reasoning samples, rejection-sampled from the checkpoint of the second, reasoning-oriented RL
stage: several answers per prompt, only the correct (and readable) ones kept. The other ~200k are
non-reasoning samples (writing, factual QA, self-cognition, translation) reused from DeepSeek-V3's
supervised data pipeline. §4.1 (Table 6) then found that distilling from the big model beat running
the same large-scale RL on the small one. Both kinds of distillation are here:

- **Sequence level** (what R1 did): `rejection_sample` lets the teacher sample `samples_per_prompt`
  completions per prompt, keeps up to `keep_per_prompt` distinct ones that the answer checker
  accepts, and the student trains on them with `minids.train.fit` like on any data.
- **Logit level** (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"): the student
  matches the teacher's whole next-token distribution, softened by a temperature T, on the
  training data, mixed with the ordinary cross-entropy by a weight alpha:

      loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

  Why T^2: the gradient of the KL term with respect to the student's logits is
  (softmax(z_s / T) - softmax(z_t / T)) / T, and for large T the difference of the two softened
  distributions itself shrinks like 1/T, so the gradient shrinks like 1/T^2. Multiplying by T^2
  keeps the soft term's pull on the student about the same size whatever T is, so alpha alone sets
  the mix (Hinton et al. §2). `distillation_loss` is the term, and what exercise 05 asks for.

Teacher and student may differ in size and architecture (an MoE/MLA teacher, a small dense
student): all they must share is the tokenizer, i.e. the vocabulary, which `check_compatible`
checks before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import no_type_check

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from minids.data import TASKS, CharTokenizer
from minids.generate import generate_text
from minids.model import Transformer
from minids.train import History, TrainConfig, fit, update_moe_biases


@no_type_check  # checks the two logits' shapes itself, with a ValueError
def distillation_loss(
    student_logits: Float[Array, "B T V"],
    teacher_logits: Float[Array, "B T V"],
    temperature: float = 1.0,
    mask: Float[Array, "B T"] | None = None,
) -> Float[Array, ""]:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the tokens where mask is 1.

    The KL of one token is sum_v p_t(v) * (log p_t(v) - log p_s(v)) with p = softmax(logits / T):
    zero when the two distributions are equal, positive otherwise. No gradient flows into the teacher.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape (same vocabulary), got "
            f"{student_logits.shape} and {teacher_logits.shape}"
        )
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)  # (B, T)
    if mask is None:
        mask = jnp.ones(kl.shape, jnp.float32)
    return temperature**2 * jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def distillation_objective(
    student_logits: Float[Array, "B T V"],
    teacher_logits: Float[Array, "B T V"],
    targets: Int[Array, "B T"],
    mask: Float[Array, "B T"],
    alpha: float,
    temperature: float = 1.0,
) -> Float[Array, ""]:
    """Hinton et al.'s mix: alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(targets).

    The soft term pulls the student towards the teacher's whole distribution; the hard term keeps
    it on the data's answers. Both are averaged over the tokens where mask is 1 (exercise 05).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    mask = mask.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, targets)
    ce = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    kd = distillation_loss(student_logits, teacher_logits, temperature, mask)
    return alpha * kd + (1 - alpha) * ce


def check_compatible(teacher: Transformer, student: Transformer) -> None:
    """Teacher and student must share the vocabulary (the tokenizer); anything else may differ."""
    if teacher.cfg.vocab_size != student.cfg.vocab_size:
        raise ValueError(
            f"teacher and student must share the tokenizer: teacher vocab_size {teacher.cfg.vocab_size}, "
            f"student vocab_size {student.cfg.vocab_size}"
        )


# ------------------------------------------------------------------------ sequence-level (R1)


@dataclass
class RejectionStats:
    prompts: int = 0
    samples: int = 0
    correct: int = 0  # samples the checker accepted
    kept: int = 0  # distinct accepted samples kept (at most keep_per_prompt per prompt)
    prompts_with_a_keeper: int = 0
    rejected_examples: list[dict[str, str]] = field(default_factory=list)  # a few, for inspection


def task_check(example: dict[str, str], completion: str) -> bool:
    """The shipped tasks' answer checker (exact answer, whitespace ignored). Never raises."""
    task = TASKS.get(example.get("task", ""))
    return bool(task and task.check(example["prompt"], completion))


def rejection_sample(
    teacher: Transformer,
    examples: Sequence[dict[str, str]],
    *,
    samples_per_prompt: int = 4,
    keep_per_prompt: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    check: Callable[[dict[str, str], str], bool] = task_check,
    seed: int = 0,
    tokenizer: CharTokenizer | None = None,
) -> tuple[list[dict[str, str]], RejectionStats]:
    """Sample completions from the teacher and keep the correct ones (R1 §2.3.3, §2.4).

    Returns the kept examples, `{"prompt", "answer": completion, "task"}`, ready for `fit`, and
    counts of what was sampled, accepted and kept.
    """
    for name, value in (
        ("samples_per_prompt", samples_per_prompt),
        ("keep_per_prompt", keep_per_prompt),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    tokenizer = tokenizer or CharTokenizer()
    prompts = [ex["prompt"] for ex in examples for _ in range(samples_per_prompt)]
    completions = generate_text(
        teacher,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        key=jax.random.key(seed),
    )
    kept, stats = [], RejectionStats(prompts=len(examples), samples=len(prompts))
    for i, ex in enumerate(examples):
        mine = completions[i * samples_per_prompt : (i + 1) * samples_per_prompt]
        chosen: list[str] = []
        for completion in mine:
            if check(ex, completion):
                stats.correct += 1
                if completion not in chosen and len(chosen) < keep_per_prompt:
                    chosen.append(completion)
            elif len(stats.rejected_examples) < 10:
                stats.rejected_examples.append({"prompt": ex["prompt"], "completion": completion})
        kept.extend(
            {"prompt": ex["prompt"], "answer": c, "task": ex.get("task", "")} for c in chosen
        )
        stats.prompts_with_a_keeper += bool(chosen)
    stats.kept = len(kept)
    return kept, stats


def accuracy(
    model: Transformer,
    examples: Sequence[dict[str, str]],
    *,
    check=task_check,
    max_new_tokens: int = 8,
    tokenizer: CharTokenizer | None = None,
) -> float:
    """The fraction of prompts whose greedy completion `check` accepts."""
    if not examples:
        raise ValueError("examples must not be empty")
    outputs = generate_text(
        model,
        tokenizer or CharTokenizer(),
        [ex["prompt"] for ex in examples],
        max_new_tokens=max_new_tokens,
    )
    return sum(bool(check(ex, out)) for ex, out in zip(examples, outputs, strict=True)) / len(
        examples
    )


# ------------------------------------------------------------------------------- logit level


@partial(nnx.jit, static_argnames=("alpha", "temperature"))
def distill_step(student, optimizer, batch, teacher, *, alpha: float, temperature: float):
    """One AdamW step on alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE (+ MoE aux loss)."""
    teacher_logits = teacher(batch["inputs"])

    def loss(model):
        logits, aux = model.forward_with_aux(batch["inputs"])
        objective = distillation_objective(
            logits, teacher_logits, batch["targets"], batch["loss_mask"], alpha, temperature
        )
        return objective + aux.get("aux_loss", 0.0), aux

    (value, aux), grads = nnx.value_and_grad(loss, has_aux=True)(student)
    optimizer.update(student, grads)
    update_moe_biases(student, aux)  # a MoE student keeps V3's aux-free balancing
    return {"loss": value, "grad_norm": optax.tree.norm(grads)}


def fit_logit_distillation(
    student: Transformer,
    teacher: Transformer,
    train_examples: Sequence[dict[str, str]],
    val_examples: Sequence[dict[str, str]] | None = None,
    cfg: TrainConfig | None = None,
    *,
    alpha: float = 0.5,
    temperature: float = 2.0,
    progress: bool = True,
    ckpt_dir=None,
    resume: bool = False,
) -> History:
    """Train `student` in place on the data with the teacher's softened logits as extra targets.

    Same loop, batches, checkpoints and resume as `minids.train.fit`; `History.loss` is the mixed loss,
    `val_loss` the student's plain cross-entropy on the validation data.
    """
    check_compatible(teacher, student)
    cfg = TrainConfig() if cfg is None else cfg
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    step = partial(
        distill_step, teacher=teacher, alpha=float(alpha), temperature=float(temperature)
    )
    return fit(
        student,
        train_examples,
        val_examples,
        cfg,
        progress=progress,
        ckpt_dir=ckpt_dir,
        resume=resume,
        step_fn=step,
    )

"""Exercise 05: the temperature-scaled distillation loss.

DeepSeek-R1 (arXiv 2501.12948, §2.4) made small models strong by training them on a big model's
outputs. Besides fine-tuning on the teacher's sampled text, a student can learn from the teacher's
whole next-token distribution: its logits. You will write that loss (Hinton et al. 2015,
"Distilling the Knowledge in a Neural Network"), in plain JAX:

    distillation_loss = T^2 * KL( softmax(teacher_logits / T) || softmax(student_logits / T) )

averaged over the tokens a mask selects. Notebook 05 writes it in numpy for one token; its
training loop then mixes it with the ordinary cross-entropy, which it does not write out:

    distillation_objective = alpha * distillation_loss + (1 - alpha) * cross_entropy(targets)

Points: 19 in all (distillation_loss 10, distillation_objective 9); a check is worth 1 point
unless its line below says 2.

Shapes use one set of letters: B batch, T positions, V vocabulary.

How to work:
- Replace the `raise NotImplementedError` with your code. Keep the name and signature.
- Grade yourself with `pytest exercises/test_05_distillation.py` (add `-x` to stop at the first
  failure). Every failure message says what was expected.
- Your code must work under `jax.jit` and `jax.grad`, so use `jnp`, not `np`, on the inputs.

When all checks pass, compare with `minids/distill.py::distillation_loss`, which the grader uses as
the answer key, and see it at work in `minids.distill.fit_logit_distillation` and notebook 05.
"""

from __future__ import annotations

import jax  # noqa: F401  (you will want jax.nn.log_softmax and jax.lax.stop_gradient)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
from jaxtyping import Array, Float, Int


def distillation_loss(
    student_logits: Float[Array, "B T V"],
    teacher_logits: Float[Array, "B T V"],
    temperature: float = 1.0,
    mask: Float[Array, "B T"] | None = None,
) -> Float[Array, ""]:
    """T^2 times the KL divergence from the teacher's softened distribution to the student's.

    The idea. A teacher that puts 0.7 on the right token and 0.2 on a plausible second one says
    more than the one-hot label does. Dividing both models' logits by a temperature T > 1 softens
    their distributions, so that these small probabilities carry weight:

        p = softmax(teacher_logits / T)        q = softmax(student_logits / T)      (over V)
        KL(p || q) = sum_v p_v * (log p_v - log q_v)          (>= 0, and 0 only when p = q)

    Why multiply by T^2: the gradient of KL(p || q) with respect to the student's logits is
    (q - p) / T, and for a large T the difference q - p itself shrinks like 1/T. Multiplying by T^2
    keeps the size of this loss's gradient about the same whatever T is, so that mixing it with the
    ordinary cross-entropy (alpha * this + (1 - alpha) * CE) means what alpha says.

    Then average over tokens: sum the per-token KL times `mask` and divide by the sum of `mask`
    (every token counts when `mask` is None). The teacher is fixed: no gradient may flow into it.

    Args:
        student_logits: (B, T, V) float.
        teacher_logits: (B, T, V) float, same shape.
        temperature: T > 0.
        mask: (B, T) of 0.0 / 1.0, or None for all ones.

    Returns:
        A scalar float32.

    Hints:
        - `jax.nn.log_softmax(x / T, axis=-1)` gives log p without overflow, even for logits of 1000.
        - p = exp(log p).
        - `jax.lax.stop_gradient(teacher_logits)` keeps the teacher fixed.

    The grader checks (1 point per check): a scalar; two hand-computed values (T = 1 and T = 2); zero when teacher and
    student agree, positive when not; the T^2 factor; the mask; no NaN for huge logits; the
    gradient (and none into the teacher); and that it works under `jax.jit`.
    """
    raise NotImplementedError


def distillation_objective(
    student_logits: Float[Array, "B T V"],
    teacher_logits: Float[Array, "B T V"],
    targets: Int[Array, "B T"],
    mask: Float[Array, "B T"],
    alpha: float,
    temperature: float = 1.0,
) -> Float[Array, ""]:
    """The student's whole loss: alpha * (your distillation_loss) + (1 - alpha) * cross-entropy.

    The soft term (T^2 * KL at temperature T) teaches the teacher's whole distribution, the
    hard term (cross-entropy of the student's logits at temperature 1 against the data's next
    tokens `targets`) keeps the student on the right answers:

        ce = mean over tokens where mask = 1 of  -log softmax(student_logits)[targets]
        loss = alpha * distillation_loss(student, teacher, temperature, mask) + (1 - alpha) * ce

    alpha = 1 is pure distillation, alpha = 0 plain training (the teacher is then ignored).

    Args: logits (B, T, V); targets (B, T) integer token ids; mask (B, T) 0/1 floats;
        alpha in [0, 1] (anything else: raise ValueError naming `alpha`); temperature > 0.
    Returns: a float scalar.

    Hints: `jax.nn.log_softmax` and `jnp.take_along_axis(log_p, targets[..., None], axis=-1)`;
    call your `distillation_loss` above for the soft term.

    The grader checks (9 points): alpha = 1 is the distillation loss (1); alpha = 0 is the masked
    cross-entropy at temperature 1 (2); alpha = 0.3 mixes them (1); masked tokens change nothing
    (2); alpha outside [0, 1] raises ValueError (1); no gradient reaches the teacher (1); it works
    under `jax.jit` (1).
    """
    raise NotImplementedError

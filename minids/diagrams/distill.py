"""Diagrams for notebook 05 (distillation): the two ways a student learns from a teacher.

- `draw_distillation_pipeline`: on top, sequence-level distillation as DeepSeek-R1 did it (§2.3.3,
  §2.4): the teacher samples k completions per prompt, a rule checker keeps the correct ones
  (rejection sampling), and the student is fine-tuned on them with plain cross-entropy. Below,
  logit distillation (Hinton et al. 2015): on the same text, the student is pulled toward the
  teacher's softened next-token distribution by a KL term.
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas


def draw_distillation_pipeline():
    """Sequence level (sample, check, keep, SFT) above; logit level (KL to the teacher) below."""
    fig, ax = canvas(13.0, 6.0)
    h = 0.95

    # Sequence level.
    ax.text(0.2, 5.6, "sequence level (what R1 did)", fontsize=11, weight="bold")
    y = 4.1
    box(ax, 0.2, y, 1.7, h, "prompt\n'37+48='", COLORS["data"])
    box(ax, 2.5, y, 1.8, h, "teacher\n(RL-trained)", COLORS["model"])
    box(
        ax,
        4.9,
        y - 0.2,
        2.3,
        h + 0.4,
        "k completions\n<think>…</think>\n<answer>85</answer>\n<answer>75</answer> …",
        COLORS["data"],
        fontsize=8,
    )
    box(ax, 7.8, y, 2.0, h, "rule checker\n(answer right?)", COLORS["reward"])
    box(ax, 10.4, y, 2.4, h, "kept: correct ones\n(rejection sampling)", COLORS["ffn"])
    arrow(ax, (1.9, y + h / 2), (2.5, y + h / 2))
    arrow(ax, (4.3, y + h / 2), (4.9, y + h / 2), "")
    ax.text(4.6, y + h + 0.05, "sample\nT = 1", ha="center", fontsize=8)
    arrow(ax, (7.2, y + h / 2), (7.8, y + h / 2))
    arrow(ax, (9.8, y + h / 2), (10.4, y + h / 2))
    ax.text(10.1, y - 0.35, "wrong: dropped", ha="center", fontsize=8, color="#a00000")
    box(
        ax,
        7.8,
        2.5,
        5.0,
        0.8,
        "student: SFT (cross-entropy) on the kept text",
        COLORS["attention"],
    )
    arrow(ax, (11.6, y), (11.6, 3.3))

    # Logit level.
    ax.text(0.2, 1.85, "logit level (Hinton et al. 2015)", fontsize=11, weight="bold")
    y2 = 0.4
    box(ax, 0.2, y2, 1.7, h, "training text\n(prompt, answer)", COLORS["data"], fontsize=8)
    box(ax, 2.5, y2 + 0.65, 1.8, 0.75, "teacher", COLORS["model"])
    box(ax, 2.5, y2 - 0.3, 1.8, 0.75, "student", COLORS["attention"])
    arrow(ax, (1.9, y2 + h / 2), (2.5, y2 + 1.0))
    arrow(ax, (1.9, y2 + h / 2), (2.5, y2 + 0.05))
    box(ax, 4.9, y2 + 0.65, 2.3, 0.75, "p_t = softmax(z_t / T)", COLORS["norm"], fontsize=8.5)
    box(ax, 4.9, y2 - 0.3, 2.3, 0.75, "p_s = softmax(z_s / T)", COLORS["norm"], fontsize=8.5)
    arrow(ax, (4.3, y2 + 1.0), (4.9, y2 + 1.0))
    arrow(ax, (4.3, y2 + 0.05), (4.9, y2 + 0.05))
    box(
        ax,
        7.8,
        y2,
        5.0,
        h,
        "loss = α T² KL(p_t ‖ p_s) + (1 − α) CE\ngradient into the student only",
        COLORS["reward"],
        fontsize=9,
    )
    arrow(ax, (7.2, y2 + 1.0), (7.8, y2 + 0.7))
    arrow(ax, (7.2, y2 + 0.05), (7.8, y2 + 0.3))
    return fig

"""Diagrams for notebook 04 (GRPO): the loop of one GRPO step, and the clipped objective.

`draw_grpo_loop` follows DeepSeekMath §4.1 (Shao et al., 2024, arXiv 2402.03300, Figure 4 and
eq. 3) as DeepSeek-R1-Zero ran it (R1 §2.2, arXiv 2501.12948): the sampling policy writes G
completions per prompt, rules grade them, each reward is compared with its group, and the clipped,
KL-penalised objective updates the policy. `draw_clipped_objective` plots one token's term
min(rho A, clip(rho, 1 - eps, 1 + eps) A) against the ratio rho, for a positive and a negative A.
"""

from __future__ import annotations

import numpy as np

from minids.diagrams import COLORS, arrow, box, canvas


def draw_grpo_loop():
    """One GRPO step: sample a group, grade it by rule, group advantages, clipped objective, update."""
    fig, ax = canvas(12.6, 5.2)
    # Top row, left to right: prompt -> sampling policy -> G completions -> rule-based rewards.
    box(ax, 0.2, 3.9, 1.9, 1.1, "prompt $q$\n47+85=", COLORS["data"])
    box(
        ax,
        2.7,
        3.9,
        2.5,
        1.1,
        r"policy $\pi_{\theta_{old}}$" + "\nsamples at T = 1",
        COLORS["model"],
    )
    for k in range(3):  # a small stack: G completions of the one prompt
        box(ax, 5.95 + 0.12 * k, 3.75 + 0.12 * k, 2.4, 1.0, "", COLORS["data"])
    ax.text(7.27, 4.37, "$G$ completions\n$o_1, \\dots, o_G$", ha="center", va="center", fontsize=9)
    box(
        ax,
        9.2,
        3.9,
        3.2,
        1.1,
        "rule-based rewards $r_i$\naccuracy + 0.5 format",
        COLORS["reward"],
    )
    arrow(ax, (2.1, 4.45), (2.7, 4.45))
    arrow(ax, (5.2, 4.45), (5.95, 4.45))
    arrow(ax, (8.6, 4.45), (9.2, 4.45))
    # Bottom row, right to left: advantages -> objective -> update.
    box(
        ax,
        9.2,
        1.6,
        3.2,
        1.2,
        "group advantages\n" + r"$A_i = \dfrac{r_i - \mathrm{mean}(r)}{\mathrm{std}(r)}$",
        COLORS["latent"],
    )
    box(
        ax,
        4.2,
        1.5,
        4.3,
        1.4,
        "objective (DeepSeekMath eq. 3), per token\n"
        + r"$\min(\rho A_i,\ \mathrm{clip}(\rho, 1\pm\varepsilon) A_i) - \beta\, \mathbb{D}_{KL}$"
        + "\n"
        + r"$\rho = \pi_\theta / \pi_{\theta_{old}}$,  $\mathbb{D}_{KL}$: k3 to $\pi_{ref}$",
        COLORS["norm"],
        fontsize=8.5,
    )
    box(
        ax,
        0.2,
        1.6,
        3.3,
        1.2,
        "update $\\theta$, $\\mu$ times\nvalue_and_grad + AdamW",
        COLORS["ffn"],
    )
    arrow(ax, (10.8, 3.9), (10.8, 2.8))
    arrow(ax, (9.2, 2.2), (8.5, 2.2))
    arrow(ax, (4.2, 2.2), (3.5, 2.2))
    # Back to the sampler: the updated policy is the next step's pi_old.
    arrow(ax, (1.85, 2.8), (1.85, 3.9), r"next step: $\theta_{old} \leftarrow \theta$")
    # The frozen reference, read only by the KL term.
    box(
        ax,
        4.6,
        0.05,
        3.5,
        0.8,
        r"reference $\pi_{ref}$: the start, frozen",
        COLORS["cache"],
    )
    arrow(ax, (6.35, 0.85), (6.35, 1.5), r"$\log \pi_{ref}$ (only if $\beta > 0$)", linestyle="--")
    ax.text(
        10.8,
        0.45,
        "no value network:\nthe group mean is the baseline",
        ha="center",
        va="center",
        fontsize=8.5,
        style="italic",
    )
    ax.set_title("One GRPO step (DeepSeekMath §4.1, as in R1-Zero §2.2)", fontsize=11)
    return fig


def draw_clipped_objective(epsilon: float = 0.2):
    """One token's clipped term against the ratio rho, for A > 0 and A < 0, and where mu = 1 sits."""
    import matplotlib.pyplot as plt

    rho = np.linspace(0.0, 2.0, 401)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, adv in zip(axes, (1.0, -1.0), strict=True):
        term = np.minimum(rho * adv, np.clip(rho, 1 - epsilon, 1 + epsilon) * adv)
        ax.plot(rho, rho * adv, ":", color="grey", label=r"$\rho A$ (no clip)")
        ax.plot(rho, term, color="C0", linewidth=2, label=r"$\min(\rho A, \mathrm{clip}(\rho) A)$")
        ax.axvspan(1 - epsilon, 1 + epsilon, color=COLORS["norm"], alpha=0.7, zorder=0)
        ax.axvline(1.0, color="C3", linewidth=1)
        ax.annotate(
            r"$\mu = 1$: $\rho = 1$ here",
            xy=(1.0, adv),
            xytext=(1.25 if adv > 0 else 0.08, -1.6 if adv > 0 else 1.3),
            fontsize=8.5,
            color="C3",
            arrowprops=dict(arrowstyle="-|>", color="C3", linewidth=0.8),
        )
        # Where the clip binds the term is flat in rho: that token gets no gradient.
        x_flat, y_flat = (
            (1.6, (1 + epsilon) * adv - 0.3) if adv > 0 else (0.4, (1 - epsilon) * adv - 0.3)
        )
        ax.text(x_flat, y_flat, "clipped: flat, no gradient", ha="center", fontsize=8)
        ax.set_title(f"A = {adv:+.0f}" + (" (better than its group)" if adv > 0 else " (worse)"))
        ax.set_xlabel(r"ratio $\rho = \pi_\theta / \pi_{\theta_{old}}$")
        ax.set_xlim(0, 2)
        ax.set_ylim(-2.1, 2.1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("the token's term in J")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        rf"The clip, $\varepsilon$ = {epsilon} (shaded: $1 \pm \varepsilon$): a one-sided brake",
        fontsize=10,
    )
    fig.tight_layout()
    return fig

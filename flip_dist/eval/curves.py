"""Training curves as a picture: one panel per logged loss against the step. Pretraining: MLM, MTM,
ICL, their sum and the in-batch ICL accuracy; the ICL panel carries ln(B), the loss of a model that
cannot tell the rows of a batch apart, and the MTM panel the NCE loss at the noise prior, so a
flat curve is seen for what it is. Finetuning: the
summed loss and each head's BCE."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PANELS = (("mlm", "MLM loss (Eq. 6)"), ("mtm", "MTM loss (NCE, Eq. 10)"), ("icl", "ICL loss (Eq. 13)"),
          ("icl_acc", "ICL in-batch top-1 accuracy"), ("total", "total (Eq. 14)"),
          ("loss", "finetuning loss (Eq. 17)"), ("loss_id", "BCE of the ID head"), ("loss_plm", "BCE of the PLM head"))


def plot_training_curves(rows: Sequence[dict[str, Any]], path: str | Path, title: str,
                         global_batch: int | None = None, num_noise: int | None = None) -> Path | None:
    """Write the curves of `rows` (dicts with `step` and the losses) to a PNG; None when no row
    has a loss to draw. `global_batch` draws ln(B) on the ICL panel (the negatives per row),
    `num_noise` (K) the noise-prior loss on the MTM panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, name) for k, name in PANELS if any(k in r for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None)
        if key == "icl" and global_batch:
            chance = math.log(global_batch)
            ax.axhline(chance, color="grey", linestyle="--", label=f"ln B = {chance:.3f} (no signal)")
            ax.legend(fontsize=8)
        if key == "mtm" and num_noise:
            from flip_dist.models.heads import nce_prior_loss

            prior = nce_prior_loss(num_noise)
            ax.axhline(prior, color="grey", linestyle="--", label=f"noise prior = {prior:.3f} (K = {num_noise})")
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy" if key == "icl_acc" else "loss")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

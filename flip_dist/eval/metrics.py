"""AUC and logloss over a whole test split, updated batch by batch.

Logloss is a running sum. The AUC is exact, so it needs every score: torchmetrics' BinaryAUROC
(thresholds=None) keeps each update's sigmoid scores (float32, 4 bytes) and labels (int64,
8 bytes) on the CPU, i.e. 12 bytes per evaluated example until the object is dropped (120 MB for
10M examples), and compute() concatenates and sorts them, briefly needing a few times that.
What is bounded by the batch size is only the model's inputs and activations, one batch at a
time, and that is up to the caller's loop. A binned AUROC (thresholds=n) would keep O(n) state
but give an approximate AUC, so it is not used."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC


class CTRMetrics:
    """Exact AUC and mean logloss of all updates so far; holds 12 bytes per example (see above)."""

    def __init__(self) -> None:
        # No syncing inside torchmetrics: the distributed runtime gathers the predictions itself
        # (torchmetrics would all_gather CPU tensors, which an nccl group cannot carry).
        self.auc = BinaryAUROC(sync_on_compute=False)
        self.loss_sum = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
        self.auc.update(torch.sigmoid(logits), labels.long())
        self.loss_sum += float(F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum"))
        self.count += labels.numel()

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no predictions were added")
        return {"auc": float(self.auc.compute()), "logloss": self.loss_sum / self.count, "count": self.count}

"""AUC and logloss over a whole test split, updated batch by batch (torchmetrics keeps the AUC
state; logloss is a running sum), so evaluation never holds more than one batch of inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC


class CTRMetrics:
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

"""Where a run's numbers go: a JSON-lines log (one object a report) and TensorBoard event files,
both written by rank 0 only, and flushed at every report so they can be watched while it runs."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, folder: str | Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(folder) / "metrics.jsonl"
        self.writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=purge_step)
        self.file = open(self.path, "a", encoding="utf-8")

    def rewind(self, stage: str, step: int) -> None:
        """A run resumed at `step` trains the later steps again: their rows go from metrics.jsonl
        (rewritten atomically) and TensorBoard discards its events from step + 1 on."""
        if not self.enabled:
            return
        from flip_dist.io_atomic import write_text_atomic

        self.close()
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not _after(json.loads(line), stage, step)]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self._open(purge_step=step + 1)

    def write(self, stage: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"stage": stage, "step": step, "time": round(time.time(), 3), **values}) + "\n")
        self.file.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"{stage}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


def _after(row: dict[str, Any], stage: str, step: int) -> bool:
    return row.get("stage") == stage and row.get("step", 0) > step


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

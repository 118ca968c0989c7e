"""FLOPs of one step, counted from the shapes of the matrix products it runs (torch's
FlopCounterMode: the formula of each GEMM, convolution and attention op, forward and backward),
not estimated from a parameter count: the PLM's share is the part counted inside its module."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class StepFlops:
    total: float            # the whole dense side: PLM, ID model, heads (forward + backward)
    plm: float              # the PLM's forward + backward

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, "plm": self.plm}


def count_step_flops(step: Callable[[], object], plm: nn.Module | None) -> StepFlops:
    """Runs `step` (one forward + backward) once under the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    plm_flops = 0.0
    if plm is not None:
        name = type(plm).__name__
        per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        # The tracker names a module by its path from the outermost one it saw: the PLM is the
        # shortest path ending in its attribute name or, called on its own, its class name.
        keys = [k for k in per_module if k.endswith(".plm") or k == name]
        plm_flops = float(per_module[min(keys, key=len)]) if keys else 0.0
    return StepFlops(float(counter.get_total_flops()), plm_flops)

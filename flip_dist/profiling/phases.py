"""Where one training step's wall time goes, as a partition: the clock is always in exactly one
phase, and `switch` hands the time since the last switch to the phase being left, so the phases
add up to the step by construction (nothing counted twice, nothing lost).

The runtime switches at the boundaries it owns (data, lookups, optimizer); hooks switch inside the
dense forward and backward (the PLM's forward, the first gradient reaching the PLM's output, the
first reaching the table lookups); every torch.distributed collective switches to `comm` and back.
On a GPU each switch synchronises the device, which removes overlap: a profile's phases say what
each part costs alone, its step time is measured the same way."""
from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

# In step order; `other` is what the runtime does between them (bookkeeping, the batch's transfer).
PHASES = ("data_wait", "lookups", "plm_fwd", "heads", "plm_bwd", "optimizer", "comm", "other")
PHASE_HELP = {
    "data_wait": "waiting for the next batch (Ray Data stream or shard reader)",
    "lookups": "masking, table lookups and their all-to-all, forward and backward (fused table update)",
    "plm_fwd": "the PLM's forward",
    "heads": "ID model and the objectives' heads, forward and backward",
    "plm_bwd": "the PLM's backward",
    "optimizer": "the dense optimizer step (DeepSpeed)",
    "comm": "inside torch.distributed collectives (gradient reduction, ZeRO gathers, syncs)",
    "other": "the rest of the loop",
}
# Collectives every library here calls through torch.distributed (DeepSpeed's comm, TorchRec's).
COLLECTIVES = ("all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "_all_gather_base",
               "all_gather_object", "reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base", "all_to_all",
               "all_to_all_single", "broadcast", "barrier", "reduce", "gather", "scatter")


class PhaseClock:
    """Accumulates seconds by phase; `off()` gives one whose switches cost a method call."""

    def __init__(self, sync: Callable[[], None] | None = None, enabled: bool = True) -> None:
        self.enabled, self.sync = enabled, sync
        self.current = "other"
        self.totals: dict[str, float] = defaultdict(float)
        self._since = time.perf_counter()

    @classmethod
    def off(cls) -> PhaseClock:
        return cls(enabled=False)

    def switch(self, phase: str) -> str:
        """Enter `phase`; returns the phase left, so a caller can go back to it."""
        left = self.current
        if not self.enabled:
            return left
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.totals[left] += now - self._since
        self._since, self.current = now, phase
        return left

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        back = self.switch(name)
        try:
            yield
        finally:
            self.switch(back)

    def take(self) -> dict[str, float]:
        """The seconds by phase since the last take (closing the current phase's share)."""
        self.switch(self.current)
        out = {p: self.totals.get(p, 0.0) for p in PHASES}
        out.update({p: v for p, v in self.totals.items() if p not in out})
        self.totals = defaultdict(float)
        return out


class _Mark(torch.autograd.Function):
    """Identity; its backward switches the clock when the gradient reaches this point (and, with
    `at_end`, again when the whole backward pass is over)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clock: PhaseClock, phase: str, at_end: str | None) -> torch.Tensor:
        ctx.clock, ctx.phase, ctx.at_end = clock, phase, at_end
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        ctx.clock.switch(ctx.phase)
        if ctx.at_end is not None:
            clock, phase = ctx.clock, ctx.at_end
            torch.autograd.Variable._execution_engine.queue_callback(lambda: clock.switch(phase))
        return grad, None, None, None


def mark_backward(x: torch.Tensor, clock: PhaseClock, phase: str, at_end: str | None = None) -> torch.Tensor:
    """`x`, whose gradient's arrival in backward switches `clock` to `phase`."""
    if not clock.enabled or not x.requires_grad:
        return x
    return _Mark.apply(x, clock, phase, at_end)


def watch_plm(plm: nn.Module, clock: PhaseClock) -> list[Any]:
    """Hooks: the PLM's forward is `plm_fwd` (then back to `heads`); backward is `plm_bwd` from
    the moment the gradient reaches its output. Autograd runs later-created nodes first, so the
    heads' and the ID model's backward come before it, the lookups' after it (their gradient's
    arrival switches to `lookups`: see mark_backward in the runtime). Returns the hook handles."""
    def before(module: nn.Module, args: Any, kwargs: Any) -> None:
        clock.switch("plm_fwd")

    def after(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        clock.switch("heads")
        state = getattr(output, "last_hidden_state", None)
        if state is not None:
            output.last_hidden_state = mark_backward(state, clock, "plm_bwd")
        return output

    return [plm.register_forward_pre_hook(before, with_kwargs=True),
            plm.register_forward_hook(after, with_kwargs=True)]


@contextlib.contextmanager
def timed_collectives(clock: PhaseClock) -> Iterator[None]:
    """Every torch.distributed collective called while inside counts as `comm` (an asynchronous
    one's wait counts where it is waited for). Enter it before DeepSpeed initialises its
    communication backend: that keeps references to some of these functions."""
    import torch.distributed as dist

    saved = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with clock.phase("comm"):
                return fn(*args, **kwargs)
        return call

    for name, fn in saved.items():
        setattr(dist, name, timed(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)

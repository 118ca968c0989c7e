"""Noise sampler for NCE: K noise feature ids drawn from the train-split feature frequencies
(paper Eq. 10) with Walker/Vose's alias method, O(1) a draw, on the device the model runs on.

Why an alias table and not `torch.multinomial`: multinomial re-scans (cumsum) the whole
distribution on every call, O(M) for M = millions of feature ids, while an alias draw is two
uniforms and two gathers. The table is built once from `feature_counts.npy` (index = global
feature id, value = train count); ids with count 0 (padding, <MASK>, unused OOV ids) are never
drawn, and `log_prob` gives log q for the NCE logit correction -log(K q).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["AliasSampler", "build_alias_table"]


def _as_counts(counts: Any) -> np.ndarray:
    """Validate counts as a 1-D, finite, non-negative float64 array with a positive sum."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    arr = np.asarray(counts)
    if arr.ndim != 1:
        raise ValueError(f"AliasSampler: counts must be 1-D (one entry per feature id), "
                         f"got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("AliasSampler: counts is empty; no outcome to draw")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"AliasSampler: counts must be integer or float, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"AliasSampler: counts[{bad}] = {arr[bad]} is not finite")
    if (arr < 0).any():
        bad = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"AliasSampler: counts[{bad}] = {arr[bad]} is negative; "
                         "counts must be non-negative")
    total = arr.sum()
    if not total > 0:
        raise ValueError("AliasSampler: all counts are zero; the noise distribution is empty")
    return arr


def build_alias_table(counts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q float64, threshold float64, alias int64) of Vose's alias table, fully vectorised.

    Draw: column i uniform in [0, M), keep i if a uniform coin < threshold[i], else alias[i].

    Vose pairs each "small" column (p = M q < 1) with a "large" one (p >= 1) that tops it up, and
    a large that drops below 1 becomes a small itself. Processing smalls in a fixed order and
    each exhausted large right after the small that exhausted it, paired with the next large,
    makes the pairing a function of two running sums, so no Python loop is needed:
    D = cumsum of the smalls' deficits (1 - p), E = cumsum of the larges' surpluses (p - 1).
    Small s_i tops up from large l_j, j = first with E_j >= D_{i-1}; large l_j runs out at the
    first small k with D_k > E_j, keeps threshold 1 + E_j - D_k and aliases to l_{j+1}.
    Every column then holds at most two outcomes and the masses add back to p. Integer counts
    are swept in exact int64 arithmetic (unit = sum of counts), so the table is exact up to the
    final float conversion; other weights in float64. O(M log M) via searchsorted, ~1 s at 4.5M.
    """
    c = _as_counts(counts)
    m = c.size
    total = c.sum()
    q = c / total
    exact = bool(np.all(c == np.floor(c))) and total * m < 2.0 ** 62
    if exact:  # p and 1 in units of 1/total: p_i = c_i * m / total
        one: float | int = int(total)
        p: np.ndarray = c.astype(np.int64) * m
    else:
        one, p = 1.0, q * m
    threshold = np.ones(m, dtype=np.float64)
    alias = np.arange(m, dtype=np.int64)
    small = np.flatnonzero(p < one)
    large = np.flatnonzero(p >= one)
    if small.size == 0 or large.size == 0:  # uniform (up to rounding): every column keeps itself
        return q, threshold, alias
    deficit = one - p[small]
    d_cum = np.cumsum(deficit)
    e_cum = np.cumsum(p[large] - one)
    d_before = np.concatenate([d_cum[:1] * 0, d_cum[:-1]])  # D_{i-1}, consistent with d_cum
    j = np.searchsorted(e_cum, d_before, side="left")
    np.minimum(j, large.size - 1, out=j)  # float rounding at the very end of the sweep
    threshold[small] = p[small] / one
    alias[small] = large[j]
    k = np.searchsorted(d_cum, e_cum, side="right")  # the small that exhausts l_j, if any
    runs_out = k < small.size
    thr_large = np.ones(large.size, dtype=np.float64)
    thr_large[runs_out] = (one + e_cum[runs_out] - d_cum[k[runs_out]]) / one
    next_large = large[np.minimum(np.arange(1, large.size + 1), large.size - 1)]
    threshold[large] = np.clip(thr_large, 0.0, 1.0)
    alias[large] = np.where(runs_out, next_large, large)
    threshold[c == 0] = 0.0  # never kept (coin >= 0), and never an alias target (not large)
    return q, threshold, alias


class AliasSampler(nn.Module):
    """Draws ids i with probability q_i = counts_i / sum(counts), O(1) a draw, vectorised.

    An `nn.Module` holding buffers only, so `.to(device)` moves it with the model and the table
    goes into checkpoints: `prob` (float64, q), `threshold` (float32) and `alias` (int64).
    Dtype casts (`.half()`, `.to(torch.bfloat16)`, DeepSpeed's bf16 conversion of the whole
    model) are ignored for these buffers: a bf16 threshold or q would bias the noise.
    """

    prob: torch.Tensor
    threshold: torch.Tensor
    alias: torch.Tensor

    def __init__(self, counts: Any, device: torch.device | str = "cpu") -> None:
        super().__init__()
        q, threshold, alias = build_alias_table(counts)
        self.register_buffer("prob", torch.as_tensor(q, dtype=torch.float64, device=device))
        self.register_buffer("threshold",
                             torch.as_tensor(threshold.astype(np.float32), device=device))
        self.register_buffer("alias", torch.as_tensor(alias, dtype=torch.int64, device=device))
        self.min_log_prob = float(np.log(q[q > 0].min()))   # a floor for log q of undrawable ids

    @property
    def num_outcomes(self) -> int:
        return int(self.alias.numel())

    @property
    def device(self) -> torch.device:
        return self.alias.device

    def log_prob(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """log q(ids) (-inf for zero-count ids), for the NCE correction -log(K q)."""
        ids = ids.to(self.device)
        return torch.log(self.prob.index_select(0, ids.reshape(-1))).reshape(ids.shape).to(dtype)

    @torch.no_grad()
    def sample(self, shape: int | Sequence[int],
               generator: torch.Generator | None = None) -> torch.Tensor:
        """int64 ids of `shape` on the sampler's device; one float64 uniform a draw.

        u * M splits into the column (integer part) and the coin (fraction, ~30 bits left at
        M = 4.5M). Not torch.randint for the column: below 2^28 outcomes (CPU; 2^32 on CUDA)
        it reduces a 32-bit word modulo M, a relative skew of up to M / 2^32 (0.1% at 4.5M).
        The same seeded `generator` (on the sampler's device) gives the same draws.
        """
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64))
        m = self.num_outcomes
        u = torch.rand(n, generator=generator, device=self.device, dtype=torch.float64).mul_(m)
        col = u.long().clamp_(max=m - 1)  # (1 - 2^-53) * M rounds below M; the clamp is a guard
        coin = u.sub_(col)
        # index_select is ~2x faster than advanced indexing on CPU; where writes into `out`
        out = self.alias.index_select(0, col)
        keep = coin < self.threshold.index_select(0, col)
        return torch.where(keep, col, out, out=out).reshape(shape)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> AliasSampler:
        """Follow device moves, refuse dtype casts (see the class docstring)."""
        for name, buf in self._buffers.items():
            if buf is None:
                continue
            moved = fn(buf)
            if moved.dtype != buf.dtype:
                moved = buf.to(device=moved.device)
            self._buffers[name] = moved
        return self

    def extra_repr(self) -> str:
        return f"num_outcomes={self.num_outcomes}, device={self.device}"

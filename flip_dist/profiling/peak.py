"""The peak a step's FLOP rate is measured against. On CPU: the rate of a plain GEMM of the PLM's
own shapes in the run's precision, measured here with this process's threads (no datasheet says
what two shared vCPUs give). On a GPU: the datasheet's dense tensor-core peak."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# Dense (no sparsity) peaks in TFLOP/s by precision, from the vendors' datasheets (SXM parts).
GPU_PEAKS_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp32": 31.2},
}


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str              # "measured GEMM m x k x n, dtype, threads" or "datasheet <GPU>"


def gpu_peak(device: torch.device, precision: str) -> Peak:
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS_TFLOPS.items():
        if key in name:
            return Peak(peaks[precision], f"datasheet {key} dense {precision}")
    raise KeyError(f"no datasheet peak for GPU {name!r}; known: {sorted(GPU_PEAKS_TFLOPS)}")


def measured_gemm_peak(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                       seconds: float = 1.0) -> Peak:
    """The best of several timed repetitions of (m x k) @ (k x n) after a warm-up."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t0) / 5)
    name = str(dtype).removeprefix("torch.")
    return Peak(2 * m * k * n / best / 1e12,
                f"measured GEMM {m}x{k}x{n} {name}, {torch.get_num_threads()} thread(s)")


def device_peak(device: torch.device, precision: str, tokens: int, hidden: int) -> Peak:
    """The peak for a run: datasheet on GPU, else a GEMM of (tokens x hidden) @ (hidden x 4 hidden),
    the PLM's widest product (its feed-forward layer)."""
    if device.type == "cuda":
        return gpu_peak(device, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measured_gemm_peak(max(tokens, 64), hidden, 4 * hidden, dtype, device)

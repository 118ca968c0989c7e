"""Faults injected into real 2-worker pretraining runs on ML-100K, with exact accounting of which
rows were trained. Each run writes a sample ledger (dist.sample_log: the row ids every rank trained
at every step); compared with the uninterrupted run (conftest `uninterrupted`): 0 rows lost, and rows
trained twice only in the steps after the checkpoint resumed from, which are recomputed.
Stated tolerance: the resumed losses equal the uninterrupted ones to rtol 1e-4."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from flip_dist.distributed.metrics_log import read_metrics
from reliability.helpers import EVERY, STEPS, fault_settings, ledger, small_dist_config

LOSSES = ("mlm", "mtm", "icl", "total")


def _account(reference: Path, resumed: Path, resumed_from: int) -> tuple[int, int, int]:
    """(rows lost, rows trained twice beyond the recomputed steps, recomputed rows), all ranks."""
    ref, got = ledger(reference), ledger(resumed)
    assert sorted(ref) == sorted(got) == [0, 1]
    lost = duplicated = recomputed = 0
    for rank in ref:
        want = dict(ref[rank])
        assert len(want) == STEPS
        seen: dict[int, list[int]] = {}
        for step, rows in got[rank]:
            if step in seen:
                if step > resumed_from:
                    recomputed += len(rows)
                else:
                    duplicated += len(rows)
                assert rows == seen[step], f"rank {rank} step {step}: the recomputed step trained other rows"
            seen[step] = rows
        lost += sum(len(set(rows) - set(seen.get(step, []))) for step, rows in want.items())
        assert seen == want
    return lost, duplicated, recomputed


def _assert_same_curve(run_dir: Path, reference: Path) -> None:
    rows = [r for r in read_metrics(run_dir) if r["stage"] == "pretrain"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))         # rewound: no step twice
    ref = [r for r in read_metrics(reference) if r["stage"] == "pretrain"]
    for key in LOSSES:
        np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in ref], rtol=1e-4, err_msg=key)


def _train_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if "RayTrainWorker" in " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])]):
            found.append(p)
    return found


def _kill_a_worker_at(metrics: Path, step: int, killed: dict, timeout: float = 400) -> None:
    """When rank 0 has logged `step`, SIGKILL one Ray Train worker (the fault), once."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
            workers = _train_workers() if steps and max(steps) >= step else []
            if workers:
                victim = max(workers, key=lambda p: p.pid)
                os.kill(victim.pid, signal.SIGKILL)
                killed.update(pid=victim.pid, at=max(steps))
                return
        time.sleep(0.05)


def test_a_killed_worker_is_replaced_and_the_run_finishes_as_if_uninterrupted(
        ml100k_processed, ray_local, uninterrupted, tmp_path, tally):
    """`flip-dist pretrain` as a user runs it (a subprocess, on the session's Ray cluster): one of its
    two Ray Train workers is SIGKILLed after step 7; Ray Train restarts the worker group, the workers
    resume from the step-4 checkpoint, and the command exits 0 with the uninterrupted run's losses."""
    reference = uninterrupted("ray")[0] / "pre"
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "flip_dist.cli", "pretrain", "--ray-address", address, "--data",
           str(ml100k_processed)]
    for key, value in fault_settings(tmp_path, "ray").items():
        cmd += ["--set", f"{key}={value}"]
    killed: dict = {}
    watcher = threading.Thread(target=_kill_a_worker_at, args=(tmp_path / "pre" / "metrics.jsonl", 7, killed))
    watcher.start()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=800)
    watcher.join()
    assert killed, "the fault was never injected"
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"SIGKILLed worker pid {killed['pid']} after step {killed['at']}; the run exited 0")
    _assert_same_curve(tmp_path / "pre", reference)
    resumed_from = (killed["at"] // EVERY) * EVERY
    lost, duplicated, recomputed = _account(reference, tmp_path / "pre", resumed_from)
    print(f"rows lost {lost}, trained twice beyond the recomputed steps {duplicated}, recomputed {recomputed}")
    assert lost == 0 and duplicated == 0 and recomputed > 0
    assert (tmp_path / "pre" / "export" / "meta.json").is_file()
    tally("fault")
    tally("samples_lost", lost)
    tally("samples_duplicated", duplicated)


def test_resume_latest_skips_a_damaged_checkpoint_and_trains_every_row_once(
        ml100k_processed, ray_local, uninterrupted, tmp_path, tally, caplog):
    """Exact data mode. Stopped after step 6 (checkpoints at 4 and 6); the step-6 checkpoint is then
    damaged (one DeepSpeed optimizer file truncated). dist.resume=latest names it, falls back to step
    4, recomputes steps 5-6 and ends with the uninterrupted run's losses and rows."""
    from flip_dist.distributed.trainer import run_stage

    reference = uninterrupted("exact")[0] / "pre"
    cfg = small_dist_config(tmp_path, **{**fault_settings(tmp_path, "exact"), "dist.stop_after": 6})
    first = run_stage(cfg, "pretrain", ml100k_processed)
    assert first["export"] is None
    newest = Path(first["checkpoint"])
    victim = sorted(newest.glob("dense/state/*optim_states.pt"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    cfg.dist.stop_after, cfg.dist.resume = 0, "latest"
    run_stage(cfg, "pretrain", ml100k_processed)
    assert any(victim.name in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    _assert_same_curve(tmp_path / "pre", reference)
    lost, duplicated, recomputed = _account(reference, tmp_path / "pre", resumed_from=4)
    assert (lost, duplicated) == (0, 0) and recomputed == 2 * 2 * 8       # steps 5-6, 2 ranks, 8 rows
    tally("corruption")
    tally("samples_lost", lost)
    tally("samples_duplicated", duplicated)

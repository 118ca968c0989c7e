"""`flip-dist profile`: the runtime's own step timed phase by phase on real ML-100K; the phases
partition the step, the FLOP count is the transformer's, the trace opens as Chrome JSON, and the
command on two Ray Train workers times their collectives and shards their tables."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time

import pytest
import torch

from flip_dist.config import load_config
from flip_dist.errors import FlipConfigError
from flip_dist.profiling.commands import parse_axes, profile
from flip_dist.profiling.memory import dense_state_bytes, transformer_activation_bytes
from flip_dist.profiling.phases import PhaseClock, mark_backward

CONFIG = "ray_jobs/configs/ml100k.yaml"
SMALL = ["model.plm_layers=1", "dist.checkpoint_every=0", "dist.log_every=1000"]


def test_the_clock_partitions_time_and_backward_marks_fire_in_reverse_forward_order():
    clock = PhaseClock()
    clock.take()
    x = torch.randn(64, 64, requires_grad=True)
    order: list[str] = []

    class Spy(PhaseClock):
        def switch(self, phase: str) -> str:
            order.append(phase)
            return super().switch(phase)

    spy = Spy()
    a = mark_backward(x @ x, spy, "first_made")              # made first: its gradient arrives last
    b = mark_backward(a.tanh() @ x, spy, "second_made")
    loss = mark_backward(b.sum(), spy, "loss", at_end="after_backward")
    time.sleep(0.01)
    loss.backward()
    assert order == ["loss", "second_made", "first_made", "after_backward"]
    t = spy.take()
    assert t["loss"] >= 0 and t["first_made"] >= 0 and sum(t.values()) >= 0.01
    off = PhaseClock.off()
    assert mark_backward(x, off, "never") is x and off.take()["other"] == 0.0


def test_dense_state_follows_the_zero_stage():
    P = 1_000_000
    assert dense_state_bytes(P, 1, 0, False) == 16 * P                       # weights, grads, 2 moments
    assert dense_state_bytes(P, 2, 1, False) == 4 * P + 4 * P + 8 * P / 2
    assert dense_state_bytes(P, 2, 2, False) == 4 * P + 4 * P / 2 + 8 * P / 2
    assert dense_state_bytes(P, 4, 3, False) == 16 * P / 4
    assert dense_state_bytes(P, 2, 2, True) == 2 * P + 4 * P / 2 + 2 * P / 2 + 4 * P / 2 + 8 * P / 2
    assert transformer_activation_bytes(100, 50, 384, 12, 6, bf16=False) == 2 * transformer_activation_bytes(
        100, 50, 384, 12, 6, bf16=True)


def test_sweep_axes_are_parsed_with_their_aliases_and_refused_by_name():
    axes = parse_axes(["workers=1,2", "batch=16, 32", "data=a,b", "model.tau=0.5"], "pretrain")
    assert axes == {"dist.num_workers": ["1", "2"], "pretrain.batch_size": ["16", "32"], "data": ["a", "b"],
                    "model.tau": ["0.5"]}
    with pytest.raises(FlipConfigError, match="workers"):
        parse_axes(["workers"], "pretrain")
    with pytest.raises(FlipConfigError, match="swept twice"):
        parse_axes(["workers=1", "dist.num_workers=2"], "pretrain")


def _check_report(r: dict, out, workers: int) -> None:
    assert r["workers"] == workers and len(r["per_worker"]) == workers
    for w in r["per_worker"]:
        assert sum(w["phases"].values()) == pytest.approx(w["step_s"], rel=1e-9)       # a partition
        assert w["phases"]["plm_fwd"] > 0 and w["phases"]["plm_bwd"] > 0 and w["phases"]["lookups"] > 0
        assert w["phases"]["optimizer"] > 0 and w["phases"]["heads"] > 0
        assert w["step_s_min"] <= w["step_s_median"]
    assert sum(r["phases"].values()) == pytest.approx(r["step_s"], rel=1e-9)
    assert r["samples_per_s"] == pytest.approx(sum(w["rows_per_step"] / w["step_s"] for w in r["per_worker"]))
    assert 0 < r["mfu"] < 2 and 0 < r["plm_tflops"] and r["peak_memory_gib"] > 0.3
    est = r["memory_estimate_gib"]
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"), abs=1e-3)
    assert (out / "profile.png").stat().st_size > 10_000
    with gzip.open(r["traces"][0], "rt") as f:
        events = json.load(f)["traceEvents"]
    assert any(e.get("name") == "flip_step" for e in events)


def test_profile_in_process_on_real_ml100k(ml100k_processed, tmp_path):
    cfg = load_config(CONFIG, SMALL + ["pretrain.batch_size=16", "model.plm_length_groups=1"])
    r = profile(cfg, "pretrain", ml100k_processed, tmp_path, steps=2, warmup=1, trace_steps=1, in_process=True)
    _check_report(r, tmp_path, 1)
    # The PLM's FLOPs are the transformer's: per token and layer 24 h^2 (Q, K, V, output, FFN 4h)
    # and 4 s h (scores, weighted sum); backward twice forward. Rows: text and masked text stacked,
    # in one call padded to the batch's longest row (plm_length_groups=1).
    w = r["per_worker"][0]
    rows, seq = w["flops_plm_shape"]
    h = 384
    assert rows == 32
    assert w["flops_per_step"]["plm"] == pytest.approx(3 * rows * seq * (24 * h * h + 4 * seq * h), rel=0.05)
    assert w["flops_per_step"]["total"] > w["flops_per_step"]["plm"]
    assert r["tokens_per_s"] > 0
    assert json.loads((tmp_path / "profile.json").read_text())["png"].endswith("profile.png")


def test_profiling_a_stage_that_does_not_train_is_refused(ml100k_processed, tmp_path):
    cfg = load_config(CONFIG, SMALL)
    with pytest.raises(FlipConfigError, match="does not train"):
        profile(cfg, "evaluate", ml100k_processed, tmp_path, steps=1, warmup=1, trace_steps=0, in_process=True)


def test_profile_finetune_from_scratch_in_process(ml100k_processed, tmp_path):
    """Finetuning FLIP (both towers): the PLM's phases and the ID side's lookups are timed too."""
    cfg = load_config(CONFIG, SMALL + ["finetune.batch_size=16", "finetune.mode=flip"])
    r = profile(cfg, "finetune", ml100k_processed, tmp_path, steps=2, warmup=1, trace_steps=0, in_process=True)
    assert r["stage"] == "finetune" and r["traces"] == []
    assert r["phases"]["plm_fwd"] > 0 and r["phases"]["plm_bwd"] > 0 and r["phases"]["lookups"] > 0
    rows, _ = r["per_worker"][0]["flops_plm_shape"]
    assert rows == 16                              # one text pass in finetuning


def test_profile_command_on_two_ray_train_workers(ml100k_processed, ray_local, tmp_path):
    """`flip-dist profile` as a user runs it (its own process, on the session's Ray cluster): two Ray
    Train workers, comm timed on both, one trace per rank, the table on the terminal."""
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "flip_dist.cli", "profile", "--config", CONFIG, "--data", str(ml100k_processed),
           "--out", str(tmp_path), "--ray-address", address, "--steps", "2", "--warmup", "1", "--trace-steps", "1"]
    for item in SMALL + ["pretrain.batch_size=16", "dist.num_workers=2"]:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "samples/s" in proc.stdout and "plm_bwd" in proc.stdout
    r = json.loads((tmp_path / "profile.json").read_text())
    _check_report(r, tmp_path, 2)
    assert all(w["phases"]["comm"] > 0 for w in r["per_worker"])          # gradient reduction, all-to-all syncs
    assert r["global_batch"] == 16 and {w["rows_per_step"] for w in r["per_worker"]} == {8}
    assert len(r["traces"]) == 2


def test_an_in_process_sweep_records_a_failed_point_and_goes_on(ml100k_processed, tmp_path, capsys):
    """The second point's dataset folder does not exist: its row names the error, the first point's row
    is a full profile, and both land in the CSV and the plot."""
    import csv

    from flip_dist.profiling.commands import sweep

    axes = {"data": [str(ml100k_processed), str(tmp_path / "missing")]}
    rows = sweep(CONFIG, SMALL + ["pretrain.batch_size=8"], None, "pretrain", str(ml100k_processed),
                 tmp_path / "sw", axes, steps=1, warmup=1, trace_steps=0, in_process=True)
    assert [bool(r["error"]) for r in rows] == [False, True]
    assert "missing" in rows[1]["error"] and rows[0]["samples_per_s"] > 0
    with open(tmp_path / "sw" / "sweep.csv", newline="") as f:
        assert [r["data"] for r in csv.DictReader(f)] == axes["data"]
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 0
    assert json.loads((tmp_path / "sw" / "points" / "00" / "profile.json").read_text())["point"] == {
        "data": str(ml100k_processed)}
    assert "[2/2] data=" in capsys.readouterr().out

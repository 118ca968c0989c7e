"""The metrics log of a distributed stage: a fresh run into a folder that holds an earlier run's
rows starts its stage's curve anew (worker_loop rewinds to step -1); other stages' rows stay."""
from __future__ import annotations

from flip_dist.distributed.metrics_log import MetricsLog, read_metrics


def test_a_fresh_run_drops_an_earlier_runs_rows_of_its_stage(tmp_path):
    old = MetricsLog(tmp_path, enabled=True)
    for step in (0, 10, 20):
        old.write("pretrain", step, {"loss": 5.0 - step / 10})
    old.write("evaluate", 20, {"auc": 0.7})
    old.close()
    new = MetricsLog(tmp_path, enabled=True)
    new.rewind("pretrain", -1)                  # what worker_loop does when nothing is resumed
    new.write("pretrain", 0, {"loss": 9.0})
    new.close()
    rows = read_metrics(tmp_path)
    assert [(r["stage"], r["step"]) for r in rows] == [("evaluate", 20), ("pretrain", 0)]
    assert rows[1]["loss"] == 9.0

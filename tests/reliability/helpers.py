"""Shared builders for the reliability tests."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STEPS, EVERY = 16, 4          # the fault runs: 16 steps, a checkpoint every 4


def small_settings(tmp_path: Path) -> dict:
    """A 2-worker run small enough for this machine: a one-layer MiniLM, 8 rows a worker (16 global)."""
    return {"model.plm": "minilm", "model.plm_layers": 1, "model.plm_dropout": 0.0,
            "pretrain.batch_size": 16, "pretrain.max_steps": 4, "pretrain.grad_clip": 0.0,
            "pretrain.warmup_ratio": 0.0, "pretrain.embed_lr": 1e-3, "pretrain.out_dir": str(tmp_path / "pre"),
            "finetune.batch_size": 16, "finetune.max_steps": 4, "finetune.eval_rows": 256,
            "finetune.eval_batch_size": 256, "finetune.out_dir": str(tmp_path / "ft"),
            "dist.num_workers": 2, "dist.data": "ray", "dist.ds_config": "zero2", "dist.log_every": 1,
            "dist.storage_path": str(tmp_path / "ray")}


def fault_settings(tmp_path: Path, data: str) -> dict:
    """small_settings for the fault runs: 16 steps, checkpoints every 4 (3 kept), a sample ledger."""
    return {**small_settings(tmp_path), "pretrain.max_steps": STEPS, "dist.checkpoint_every": EVERY,
            "dist.keep_checkpoints": 3, "dist.sample_log": "true", "dist.data": data,
            "dist.shuffle_buffer_rows": 64}


def small_dist_config(tmp_path: Path, **over):
    from flip_dist.config import load_config

    sets = {**small_settings(tmp_path), **over}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def listening_sockets() -> set[tuple[str, int, str]]:
    """(ip, port, process name) of every listening TCP socket of this process and its descendants
    (a private local Ray started in-process: GCS, raylet, dashboard, agents, workers)."""
    import psutil

    me = psutil.Process()
    tree = {p.pid: p for p in [me, *me.children(recursive=True)]}
    found = set()
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in tree:
            try:
                name = tree[c.pid].name()
            except psutil.Error:
                name = "?"
            found.add((c.laddr.ip, c.laddr.port, name))
    return found


@contextmanager
def sampling_listeners(every_s: float = 0.3) -> Iterator[set]:
    """Collects listening_sockets() on a thread while the body runs."""
    seen: set = set()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.update(listening_sockets())
            done.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def ledger(run_dir: Path) -> dict[int, list[tuple[int, list[int]]]]:
    """rank -> [(step, row ids)] in the order they were trained (a recomputed step appears twice)."""
    out = {}
    for path in sorted((run_dir / "samples").glob("rank*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[int(path.stem[4:])] = [(r["step"], r["rows"]) for r in rows]
    return out

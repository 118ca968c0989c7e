"""End to end as users run it: `ray start --head` on loopback with token authentication (a token
of its own, RAY_AUTH_TOKEN_PATH), `ray job submit` of ray_jobs/pipeline.py (preprocess -> pretrain
-> finetune -> evaluate) on real ML-100K with a one-layer MiniLM, wait for SUCCEEDED, check the
metrics file; a request without the token is refused and every Ray listener is on loopback; then
stop Ray and check that no Ray process is left. Marked e2e: `ray stop` ends every Ray process of
the machine, so this runs in its own pytest process (tools/run_tests.sh runs it after the rest)."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from flip_dist.distributed.metrics_log import read_metrics

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes() -> list[str]:
    names = []
    for p in psutil.process_iter(["name", "cmdline"]):
        text = " ".join([p.info["name"] or ""] + (p.info["cmdline"] or []))
        if any(k in text for k in ("raylet", "gcs_server", "ray::", "RayTrainWorker", "dashboard/agent")):
            names.append(text[:120])
    return names


def _ray_listeners() -> set[tuple[str, int, str]]:
    pids = {p.pid: p.info["name"] for p in psutil.process_iter(["name", "cmdline"])
            if any(k in " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])])
                   for k in ("raylet", "gcs_server", "ray::", "dashboard", "ray/_private"))}
    return {(c.laddr.ip, c.laddr.port, pids[c.pid]) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_ray_job_submit_runs_the_pipeline(ml100k_raw, tmp_path):
    from flip_dist.ray_runtime import LOOPBACK, SINGLE_NODE_ENV

    bindir = Path(sys.executable).parent
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), SINGLE_NODE_ENV: "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="flipe2e")          # Ray's socket paths must stay short
    dash = _free_port()
    ray = str(bindir / "ray")
    deadline = time.time() + 30            # the previous pytest process's Ray may still be exiting
    while _ray_processes() and time.time() < deadline:
        time.sleep(1)
    assert not _ray_processes(), f"another Ray is running on this machine: {_ray_processes()}"
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
                    "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        address = f"http://127.0.0.1:{dash}"
        with pytest.raises(urllib.error.HTTPError) as refused:          # no token, no jobs
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
        assert refused.value.code in (401, 403)
        job_id = f"flip-e2e-{int(time.time())}"
        out = tmp_path / "runs"
        sets = [f"preprocess.raw_dir={ml100k_raw}", f"preprocess.out_dir={out}/data", "model.plm_layers=1",
                "pretrain.max_steps=6", "pretrain.batch_size=16", f"pretrain.out_dir={out}/pretrain",
                "finetune.max_steps=6", "finetune.batch_size=16", "finetune.eval_rows=1000",
                f"finetune.out_dir={out}/finetune", f"dist.storage_path={out}/ray", "dist.log_every=2",
                "dist.checkpoint_every=0"]
        cmd = [ray, "job", "submit", "--address", address, "--submission-id", job_id, "--no-wait",
               "--working-dir", str(REPO), "--", "python", "ray_jobs/pipeline.py",
               "--config", "ray_jobs/configs/ml100k.yaml"] + [a for s in sets for a in ("--set", s)]
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
        status, deadline, seen = "", time.time() + 840, set()
        while time.time() < deadline:
            seen |= _ray_listeners()         # sampled while the job's workers run
            status = subprocess.run([ray, "job", "status", "--address", address, job_id], env=env,
                                    capture_output=True, text=True, timeout=60).stdout.lower()
            if any(f"{job_id}' {s}" in status for s in ("succeeded", "failed", "stopped")):
                break
            time.sleep(5)
        logs = subprocess.run([ray, "job", "logs", "--address", address, job_id], env=env,
                              capture_output=True, text=True, timeout=60).stdout
        assert f"{job_id}' succeeded" in status, f"job did not succeed: {status}\n{logs[-4000:]}"
        exposed = sorted(s for s in seen | _ray_listeners() if s[0] not in LOOPBACK)
        assert not exposed, f"listening beyond loopback: {exposed}"

        rows = read_metrics(out / "finetune")
        evaluation = [r for r in rows if r["stage"] == "evaluate"]
        assert [r["step"] for r in rows if r["stage"] == "finetune"] == [2, 4, 6]
        assert len(evaluation) == 2 and evaluation[-1]["count"] == 1000      # finetune's own, then evaluate's
        assert 0.0 < evaluation[-1]["auc"] < 1.0
        assert evaluation[0]["auc"] == pytest.approx(evaluation[-1]["auc"], abs=1e-6)   # the export = the model
        pre = [r for r in read_metrics(out / "pretrain") if r["stage"] == "pretrain"]
        assert [r["step"] for r in pre] == [2, 4, 6] and all(r["samples_per_s"] > 0 for r in pre)
        result = json.loads((out / "finetune" / "pipeline_result.json").read_text())
        assert result["preprocess"]["num_samples"] == 72_855
        assert (out / "pretrain" / "export" / "plm_hf" / "config.json").is_file()
        assert list((out / "pretrain" / "tensorboard").glob("events.out.tfevents.*"))
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    deadline = time.time() + 30
    while _ray_processes() and time.time() < deadline:
        time.sleep(1)
    assert not _ray_processes(), f"Ray processes left behind: {_ray_processes()}"

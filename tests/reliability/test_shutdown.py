"""A private Ray leaves nothing running: a process of its tree that outlives `ray.shutdown()` (a
worker stuck in native code, here one that ignores SIGTERM) is killed after the grace period."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil

from flip_dist.ray_runtime import _reap


def test_a_process_outliving_the_shutdown_is_killed(caplog):
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    proc.terminate()                                   # ignored, as by a busy worker
    time.sleep(0.5)
    assert proc.poll() is None
    started = time.monotonic()
    _reap([psutil.Process(proc.pid)], grace_s=1.0)
    assert not psutil.pid_exists(proc.pid)             # killed and reaped (psutil waited for it)
    assert time.monotonic() - started < 10
    assert f"Ray process {proc.pid}" in caplog.text and "killing it" in caplog.text

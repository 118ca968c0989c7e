"""The benchmarks' memory meter, on a real child process that holds 200 MB."""
from __future__ import annotations

import subprocess
import sys

from flip_dist.proc_meter import TreeMemoryMeter

HOLD = "import time; x = bytearray(200_000_000); x[::4096] = b'1' * len(x[::4096]); time.sleep(1.5)"


def test_peaks_and_the_timeline_of_matching_processes():
    proc = subprocess.Popen([sys.executable, "-c", HOLD])
    with TreeMemoryMeter(proc.pid, interval=0.1, timeline="python") as meter:
        proc.wait()
    assert meter.peak_process_rss >= 200_000_000
    assert meter.peak_tree_pss >= 190_000_000
    assert meter.timeline and {pid for _, pid, _ in meter.timeline} == {proc.pid}
    assert max(rss for *_, rss in meter.timeline) >= 200_000_000

    other = subprocess.Popen([sys.executable, "-c", HOLD])
    with TreeMemoryMeter(other.pid, interval=0.1, timeline="RayTrainWorker") as meter:
        other.wait()
    assert meter.timeline == []            # nothing of that name in the tree

"""The benchmarks' memory meter, on a real child process that holds 200 MB."""
from __future__ import annotations

import subprocess
import sys

from flip_dist.proc_meter import TreeCpuMeter, TreeMemoryMeter

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


SPIN = "import time; t = time.process_time()\nwhile time.process_time() - t < {}: pass\ntime.sleep(0.6)"


def test_cpu_seconds_by_process_and_role():
    """A parent that burns 0.4 s of CPU and a child that burns 1.2 s: each is charged its own."""
    code = (f"import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', {SPIN.format(1.2)!r}]); "
            f"exec({SPIN.format(0.4)!r}); c.wait()")
    proc = subprocess.Popen([sys.executable, "-c", code])
    with TreeCpuMeter(proc.pid, interval=0.1) as meter:
        proc.wait()
    role = lambda pid, titles: "root" if pid == proc.pid else "child"  # noqa: E731
    roles = meter.by_role(role)
    assert set(roles) == {"root", "child"}
    assert 0.4 <= roles["root"] < 1.0        # its spin plus the interpreter's start
    assert 1.2 <= roles["child"] < 1.8
    child = next(pid for pid in meter.titles if pid != proc.pid)
    assert any("process_time" in t for t in meter.titles[child])
    first, last = meter.samples[0][0], meter.samples[-1][0]
    assert sum(meter.by_role(role, end=first - 1).values()) == 0          # nothing before the run
    assert meter.by_role(role, start=first - 1, end=last) == roles
    mid = (first + last) / 2                                              # a window: part of the spin
    assert 0 < sum(meter.by_role(role, start=mid).values()) < sum(roles.values())

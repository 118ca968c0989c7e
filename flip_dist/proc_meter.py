"""Peak memory of a process tree (a driver and the Ray workers it starts), sampled in a thread."""
from __future__ import annotations

import threading
import time

import psutil


class TreeMemoryMeter:
    """Samples every `interval` s: the peak of the summed PSS of the tree (shared pages, such as
    the Ray object store, counted once) and the peak RSS of any single process; with `timeline`,
    also (time, pid, RSS bytes) of each process whose command line contains that text."""

    def __init__(self, pid: int, interval: float = 0.25, timeline: str | None = None) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_tree_pss = 0
        self.peak_process_rss = 0
        self.timeline_match = timeline
        self.timeline: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemoryMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            total, now = 0, time.time()
            for p in procs:
                try:
                    mem = p.memory_full_info()
                    if self.timeline_match and self.timeline_match in " ".join(p.cmdline()[:1]):
                        self.timeline.append((now, p.pid, mem.rss))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                total += getattr(mem, "pss", mem.rss)
                self.peak_process_rss = max(self.peak_process_rss, mem.rss)
            self.peak_tree_pss = max(self.peak_tree_pss, total)
            time.sleep(self.interval)

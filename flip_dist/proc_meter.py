"""What a process tree (a driver and the Ray processes it starts) holds and uses, sampled in a thread."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil


class _TreeSampler:
    """Calls `_sample` on the root and all its descendants every `interval` s until exit."""

    def __init__(self, pid: int, interval: float) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
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
            self._sample(procs, time.time())
            time.sleep(self.interval)

    def _sample(self, procs: list[psutil.Process], now: float) -> None:
        raise NotImplementedError


class TreeMemoryMeter(_TreeSampler):
    """The peak of the summed PSS of the tree (shared pages, such as the Ray object store, counted
    once) and the peak RSS of any single process; with `timeline`, also (time, pid, RSS bytes) of
    each process whose command line contains that text. Reading PSS walks each process's page
    tables: it slows what it measures, so timed runs should not carry it."""

    def __init__(self, pid: int, interval: float = 0.25, timeline: str | None = None) -> None:
        super().__init__(pid, interval)
        self.peak_tree_pss = 0
        self.peak_process_rss = 0
        self.timeline_match = timeline
        self.timeline: list[tuple[float, int, int]] = []

    def _sample(self, procs: list[psutil.Process], now: float) -> None:
        total = 0
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


class TreeCpuMeter(_TreeSampler):
    """CPU seconds (user + system) of every process of the tree over time, and the titles it ran
    under (Ray renames a worker after the task it runs): where the machine's CPUs went, in all or in
    a window of the run. Cheap (one stat read a process). CPU used after a process's last sample,
    at most `interval` s of it, is not counted."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(pid, interval)
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.titles: dict[int, set[str]] = {}

    def _sample(self, procs: list[psutil.Process], now: float) -> None:
        cpu = {}
        for p in procs:
            try:
                t = p.cpu_times()
                title = " ".join(p.cmdline())[:120]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            cpu[p.pid] = t.user + t.system
            self.titles.setdefault(p.pid, set()).add(title)
        self.samples.append((now, cpu))

    def _at(self, t: float) -> dict[int, float]:
        """Each process's CPU seconds as of its last sample at or before `t` (Unix time)."""
        out: dict[int, float] = {}
        for now, cpu in self.samples:
            if now > t:
                break
            out.update(cpu)
        return out

    def by_role(self, role: Callable[[int, set[str]], str], start: float = float("-inf"),
                end: float = float("inf")) -> dict[str, float]:
        """CPU seconds used between `start` and `end` (Unix times; default: the whole run), summed
        by `role(pid, titles)`."""
        before, after = self._at(start), self._at(end)
        out: dict[str, float] = {}
        for pid, cpu in after.items():
            key = role(pid, self.titles[pid])
            out[key] = out.get(key, 0.0) + cpu - before.get(pid, 0.0)
        return out

"""Run a function as Ray tasks over many argument tuples, at most `limit` at a time, with progress."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

ONE_CPU_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}


def one_cpu_worker() -> None:
    """A task holds one CPU: keep the tokenizer's Rust thread pool to it. Set inside the worker, not
    as a Ray runtime env: a runtime env makes Ray start new worker processes for the first stage
    (a second of imports each, while the stage waits) instead of those it prestarted at init."""
    for key, value in ONE_CPU_ENV.items():
        os.environ.setdefault(key, value)


def _on_one_cpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def task(*args: Any) -> Any:
        one_cpu_worker()
        return fn(*args)
    return task


def run_bounded(fn: Callable[..., Any], arg_list: Sequence[tuple], limit: int, desc: str,
                num_cpus: float = 1) -> list[Any]:
    """Results in argument order. Bounded in-flight tasks keep memory flat however many parts."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_on_one_cpu(fn))
    results: list[Any] = [None] * len(arg_list)
    pending: dict[Any, int] = {}
    todo = list(enumerate(arg_list))[::-1]
    with tqdm(total=len(arg_list), desc=desc, unit="part", disable=len(arg_list) < 2) as bar:
        while todo or pending:
            while todo and len(pending) < limit:
                i, args = todo.pop()
                pending[remote.remote(*args)] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    for other in pending:
                        ray.cancel(other, force=True)
                    if isinstance(e.cause, Exception):
                        raise e.cause from e
                    raise
                bar.update(1)
    return results

"""Run a function as Ray tasks over many argument tuples, at most `limit` at a time, with progress."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

# One runtime env for every CPU task of a job, so that Ray reuses the same warm worker processes
# across stages (a different env means new processes, each paying seconds of imports). The
# tokenizer must not spawn its own threads inside a worker that holds one CPU.
WORKER_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}}


def run_bounded(fn: Callable[..., Any], arg_list: Sequence[tuple], limit: int, desc: str,
                num_cpus: float = 1) -> list[Any]:
    """Results in argument order. Bounded in-flight tasks keep memory flat however many parts."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=0, runtime_env=WORKER_ENV)(fn)
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
                    raise e.cause if isinstance(e.cause, Exception) else e
                bar.update(1)
    return results

"""Ray tasks of the data stages: one CPU each, on the worker processes Ray prestarted."""
from __future__ import annotations

import os

from flip_dist.parallel import ONE_CPU_ENV, run_bounded


def test_tasks_keep_the_tokenizer_to_their_one_cpu(ray_local):
    """The driver does not set RAYON_NUM_THREADS (conftest sets only TOKENIZERS_PARALLELISM), and
    no runtime env is passed, so the task itself must set it before any tokenizer runs."""
    assert "RAYON_NUM_THREADS" not in os.environ
    got = run_bounded(os.getenv, [(k,) for k in ONE_CPU_ENV], limit=2, desc="env")
    assert got == list(ONE_CPU_ENV.values())

"""The reliability suite (`-m reliability`): faults injected into real runs, bad inputs, broken
checkpoints. Every test here is marked `reliability` and runs in the default suite too. Tests
record what they proved with the `tally` fixture; the terminal summary prints the counts."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_TALLY: Counter = Counter()
KINDS = {"fault": "faults injected and survived",
         "bad_input": "bad inputs tried, each ending in a clear error",
         "corruption": "checkpoints corrupted and detected",
         "samples_lost": "samples lost on resume",
         "samples_duplicated": "samples trained twice beyond the recomputed steps"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture()
def tally():
    """tally(kind, n=1): count what this test proved (kinds: see KINDS)."""
    def add(kind: str, n: int = 1) -> None:
        assert kind in KINDS, kind
        _TALLY[kind] += n
    return add


def pytest_terminal_summary(terminalreporter):
    if not _TALLY:      # the suite did not run here
        return
    terminalreporter.section("reliability tally")
    for kind, text in KINDS.items():
        terminalreporter.write_line(f"{text}: {_TALLY.get(kind, 0)}")



@pytest.fixture(scope="session")
def uninterrupted(ml100k_processed, ray_local, tmp_path_factory):
    """get(data) -> (run folder, listening sockets seen while it ran): the fault runs' settings with
    no fault, one run per data mode, made when first asked and shared by the reliability tests."""
    from flip_dist.config import load_config
    from flip_dist.distributed.trainer import run_stage
    from reliability.helpers import fault_settings, sampling_listeners

    done: dict = {}

    def get(data: str):
        if data not in done:
            tmp = tmp_path_factory.mktemp(f"uninterrupted-{data}")
            cfg = load_config(None, [f"{k}={v}" for k, v in fault_settings(tmp, data).items()])
            with sampling_listeners() as seen:
                run_stage(cfg, "pretrain", ml100k_processed)
            done[data] = (tmp, seen)
        return done[data]
    return get

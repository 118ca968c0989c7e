"""Broken and foreign checkpoints, on copies of the real checkpoints of a 2-worker run (conftest
`uninterrupted`, exact data mode: checkpoints at steps 8, 12 and 16). Each kind of damage to the
newest one is detected by its digest and named, and `latest` falls back to the previous good one;
a checkpoint of another dataset or config is never picked by `latest` and refused when named."""
from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from flip_dist.checkpoints import (
    CKPT_MANIFEST,
    CheckpointError,
    find_latest_checkpoint,
    load_rank_state,
    read_checkpoint_manifest,
    verify_checkpoint,
    write_checkpoint_manifest,
)
from flip_dist.errors import FlipConfigError, FlipDataError


@pytest.fixture()
def storage(uninterrupted, tmp_path) -> Path:
    """A private copy of the run's Ray Train storage (3 checkpoints kept)."""
    run, _ = uninterrupted("exact")
    return Path(shutil.copytree(run / "ray", tmp_path / "ray"))


def _by_step(storage: Path) -> list[Path]:
    found = [(read_checkpoint_manifest(p)["step"], p) for p in storage.glob("*/checkpoint_*") if p.is_dir()]
    return [p for _, p in sorted(found)]


def _identity(folder: Path) -> dict:
    return read_checkpoint_manifest(folder)["identity"]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


DAMAGE = {
    "table shard truncated": ("sparse/__1_0.distcp", _truncate),
    "table metadata (pickle) flipped": ("sparse/.metadata", _flip_byte),
    "engine model state flipped": ("dense/state/mp_rank_00_model_states.pt", _flip_byte),
    "optimizer partition truncated": ("dense/state/*zero_pp_rank_1_mp_rank_00_optim_states.pt", _truncate),
    "rank state deleted": ("rank0.pt", lambda p: p.unlink()),
    "manifest truncated": (CKPT_MANIFEST, _truncate),
    "manifest edited": (CKPT_MANIFEST, lambda p: p.write_text(p.read_text().replace('"step": 16', '"step": 17'))),
    "unlisted file added": ("extra.pkl", lambda p: p.write_bytes(pickle.dumps({"x": 1}))),
}


def test_every_file_of_a_checkpoint_is_in_its_manifest(storage):
    newest = _by_step(storage)[-1]
    manifest = verify_checkpoint(newest)
    listed = set(manifest["files"])
    assert {"rank0.pt", "rank1.pt", "sparse/.metadata", "dense/state/mp_rank_00_model_states.pt"} <= listed
    assert any(name.endswith(".distcp") for name in listed)
    assert manifest["step"] == 16 and manifest["world_size"] == 2


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_named_and_latest_falls_back(storage, kind, caplog, tally):
    steps = _by_step(storage)
    newest, previous = steps[-1], steps[-2]
    rel, damage = DAMAGE[kind]
    target = next(newest.glob(rel)) if "*" in rel else newest / rel
    damage(target)
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(newest)
    assert str(newest) in str(err.value)
    named = target.name if kind != "unlisted file added" else "extra.pkl"
    assert named in str(err.value), str(err.value)
    with caplog.at_level(logging.WARNING):
        assert find_latest_checkpoint(storage, "pretrain", _identity(previous)) == previous
    assert any(named in r.getMessage() for r in caplog.records)
    tally("corruption")


def test_latest_considers_only_this_dataset_and_config(storage, tally):
    newest = _by_step(storage)[-1]
    identity = _identity(newest)
    assert find_latest_checkpoint(storage, "pretrain", identity) == newest
    assert find_latest_checkpoint(storage, "pretrain", {**identity, "dataset": "another"}) is None
    assert find_latest_checkpoint(storage, "pretrain", {**identity, "config": "another"}) is None
    assert find_latest_checkpoint(storage, "finetune", identity) is None
    tally("bad_input")


def test_naming_a_checkpoint_of_another_dataset_fails_before_any_worker_starts(
        storage, ml100k_processed, tmp_path, tally):
    """The same checkpoint, its manifest re-sealed as if written for another dataset."""
    from flip_dist.distributed.trainer import run_stage
    from reliability.helpers import fault_settings, small_dist_config

    newest = _by_step(storage)[-1]
    manifest = read_checkpoint_manifest(newest)
    files = manifest.pop("files")
    manifest["identity"] = {**manifest["identity"], "dataset": "0123456789abcdef"}
    write_checkpoint_manifest(newest, manifest, files)
    cfg = small_dist_config(tmp_path, **{**fault_settings(tmp_path, "exact"), "dist.resume": str(newest)})
    with pytest.raises(FlipDataError, match="another dataset"):
        run_stage(cfg, "pretrain", ml100k_processed)
    assert not (tmp_path / "pre").exists()          # nothing started
    tally("bad_input")


def test_resume_latest_with_every_checkpoint_damaged_is_a_clear_error(storage, ml100k_processed, tmp_path, tally):
    from flip_dist.distributed.trainer import run_stage
    from reliability.helpers import fault_settings, small_dist_config

    for folder in _by_step(storage):
        _truncate(folder / "rank1.pt")
    cfg = small_dist_config(tmp_path, **{**fault_settings(tmp_path, "exact"), "dist.resume": "latest",
                                         "dist.storage_path": str(storage)})
    with pytest.raises(FlipConfigError, match="no complete pretrain checkpoint of this dataset and config"):
        run_stage(cfg, "pretrain", ml100k_processed)
    tally("corruption")


class _Payload:
    """What a forged rank file could carry: unpickling it would call os.system."""

    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/flip-dist-forged-checkpoint-ran",))


def test_a_forged_rank_file_is_never_unpickled(storage, tally):
    """Someone rewrote rank0.pt with an arbitrary object AND re-sealed the manifest (so the digests
    match): weights_only=True still refuses to build the object."""
    newest = _by_step(storage)[-1]
    marker = Path("/tmp/flip-dist-forged-checkpoint-ran")
    marker.unlink(missing_ok=True)
    torch.save({"step": torch.tensor(16), "payload": _Payload()}, newest / "rank0.pt")
    manifest = read_checkpoint_manifest(newest)
    files = manifest.pop("files")
    from flip_dist.checkpoints import digest_files

    write_checkpoint_manifest(newest, manifest, digest_files(newest))
    assert verify_checkpoint(newest)["files"] != files         # the forgery verifies...
    with pytest.raises(CheckpointError, match="rank0.pt: refused to load"):
        load_rank_state(newest, 0)                               # ...but is not unpickled
    assert not marker.exists()
    assert json.loads((newest / CKPT_MANIFEST).read_text())["step"] == 16
    tally("bad_input")

"""Which run a checkpoint belongs to: the dataset it indexes and the config that shaped it. A
resumable checkpoint carries both; a run resumes only one that shares them."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flip_dist.checkpoints.integrity import CheckpointError, json_digest
from flip_dist.data.manifest import Manifest

log = logging.getLogger(__name__)

# Keys that do not change what a run computes: where it writes, how often it reports, how it is resumed.
_VOLATILE = {"dist": {"log_every", "checkpoint_every", "keep_checkpoints", "storage_path", "resume", "stop_after",
                      "max_failures", "sample_log", "cpus_per_worker"},
             "stage": {"out_dir", "eval_batch_size", "eval_rows", "lr_grid", "val_fraction"}}
_VOLATILE_MANIFEST = {"timings", "started_at_unix", "raw_dir", "tokenizer"}


def _fingerprint(obj: Any) -> str:
    return json_digest(obj)[:16]


def dataset_fingerprint(manifest: Manifest) -> str:
    """Same for the same processed data wherever it lies (paths and timings left out)."""
    return _fingerprint({k: v for k, v in manifest.to_json().items() if k not in _VOLATILE_MANIFEST})


def run_identity(config: dict[str, Any], section: str, manifest: Manifest) -> dict[str, str]:
    """What a checkpoint must share with a run to be resumed by it: the dataset, and the config of
    the model, the stage's section and the runtime's layout (not where it writes or how often it
    reports)."""
    relevant = {"model": config["model"],
                section: {k: v for k, v in config[section].items() if k not in _VOLATILE["stage"]},
                "dist": {k: v for k, v in config["dist"].items() if k not in _VOLATILE["dist"]}}
    return {"dataset": dataset_fingerprint(manifest), "config": _fingerprint(relevant)}


def check_resumable(manifest: dict[str, Any], path: Path, stage: str, world: int, identity: dict[str, str]) -> None:
    """A verified checkpoint may be resumed by this run: same stage, same number of workers (ZeRO's
    optimizer partitions do not re-shard), same dataset. Another config only warns (an explicit
    resume may change e.g. the number of steps on purpose; `latest` never picks such a checkpoint)."""
    if manifest["stage"] != stage:
        raise CheckpointError(f"checkpoint is from {manifest['stage']}, not {stage}", path=str(path))
    if manifest["world_size"] != world:
        raise CheckpointError(
            f"checkpoint was written by {manifest['world_size']} workers, this run has {world}: the tables "
            "would re-shard, but DeepSpeed ZeRO's optimizer partitions do not. Resume with "
            f"dist.num_workers={manifest['world_size']}, or start a new run from an export.", path=str(path))
    theirs = manifest.get("identity", {})
    if theirs.get("dataset") != identity["dataset"]:
        raise CheckpointError(f"checkpoint belongs to another dataset (fingerprint {theirs.get('dataset')}, this "
                              f"run's data {identity['dataset']}): its tables index another vocabulary", path=str(path))
    if theirs.get("config") != identity["config"]:
        log.warning("checkpoint %s was written with another config than this run's; resuming it as asked", path)

"""Checkpoints and exports for both runtimes, owned here and nowhere else.

- exports.py: what a finished stage leaves (state dicts + meta.json with digests), how the next
  stage checks and loads it;
- integrity.py: resumable checkpoints' SHA-256 manifest, checked before anything pickled is read;
- identity.py: which dataset and config a checkpoint belongs to, and whether a run may resume it;
- resume.py: what each distributed rank saves and restores, publishing outside Ray Train, and
  which checkpoint a run continues from."""
from flip_dist.checkpoints.exports import (
                                           META,
                                           check_export,
                                           load_export,
                                           load_module,
                                           load_state_file,
                                           read_meta,
                                           save_state_dicts,
                                           write_export,
)
from flip_dist.checkpoints.identity import check_resumable, dataset_fingerprint, run_identity
from flip_dist.checkpoints.integrity import (
                                           CKPT_MANIFEST,
                                           CheckpointError,
                                           digest_files,
                                           load_rank_state,
                                           read_checkpoint_manifest,
                                           verify_checkpoint,
                                           write_checkpoint_manifest,
)
from flip_dist.checkpoints.resume import (
                                           find_latest_checkpoint,
                                           publish_resumable,
                                           resolve_resume,
                                           restart_checkpoint,
                                           restore_resumable,
                                           save_resumable,
)

__all__ = ["CKPT_MANIFEST", "META", "CheckpointError", "check_export", "check_resumable", "dataset_fingerprint",
           "digest_files", "find_latest_checkpoint", "load_export", "load_module", "load_rank_state",
           "load_state_file", "publish_resumable", "read_checkpoint_manifest", "read_meta", "resolve_resume",
           "restart_checkpoint", "restore_resumable", "run_identity", "save_resumable", "save_state_dicts",
           "verify_checkpoint", "write_checkpoint_manifest", "write_export"]

"""A finetuned FLIP_ID export -> one TorchScript file that scores feature ids without the PLM.

FLIP_ID's prediction is the ID model's logit on the feature embeddings (Eq. 18); the PLM an
export carries is never read. The artifact holds the feature table, the ID model and its
prediction layer, so serving needs torch alone: no TorchRec, transformers, DeepSpeed or Ray.
Before it is written, the artifact is checked against the finetuning forward itself (TorchRec
lookup + FlipFinetuneDense), so a change in that path cannot go unnoticed."""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.serving.artifact import FORMAT, MODEL_FILE, SERVING_JSON, SPEC_ENTRY, load_artifact

CHECK_ROWS = (1, 7)                       # batch sizes the artifact is checked at (1: no squeeze to 0-d)
ATOL = 1e-5


class IdScorer(nn.Module):
    """feature_ids (B, F) int64 -> logits (B,): the table lookup, then the ID model with its head."""

    def __init__(self, table: torch.Tensor, id_model: nn.Module) -> None:
        super().__init__()
        self.register_buffer("table", table.detach().float().clone())
        self.id_model = id_model

    def forward(self, feature_ids: torch.Tensor) -> torch.Tensor:
        emb = torch.nn.functional.embedding(feature_ids, self.table)     # E (B, F, D), Sec. III-A
        return self.id_model(emb)[1]                                      # Linear_ID(v), Eq. 15 / 18


def _check_mode(folder: Path, meta: dict[str, Any]) -> None:
    """Only a flip_id finetuning export predicts without the PLM."""
    stage = meta.get("stage")
    if stage != "finetune":
        raise FlipConfigError(f"{folder} is a {stage!r} export; export-id needs a finetuning export "
                              "(stage 'finetune') trained with finetune.mode=flip_id")
    mode = meta.get("config", {}).get("finetune", {}).get("mode")
    if mode != "flip_id":
        raise FlipConfigError(f"{folder} was finetuned with finetune.mode={mode!r}, whose prediction needs the PLM "
                              "(flip mixes both sides' logits, flip_plm is the PLM's alone); only a "
                              "finetune.mode=flip_id export can be served without the PLM")


def _manifest(folder: Path, meta: dict[str, Any], data: str | Path | None) -> Any:
    """The dataset the export was trained on (field names and count), checked by its fingerprint."""
    from flip_dist.checkpoints import dataset_fingerprint
    from flip_dist.data.manifest import read_manifest

    where = data if data is not None else meta.get("data")
    if where is None or not (Path(where) / "manifest.json").is_file():
        raise FlipDataError(f"the dataset the export was trained on ({where}) has no manifest.json here: pass "
                            "data= (--data) with that processed dataset folder", path=str(folder))
    manifest = read_manifest(where)
    want = meta.get("dataset_fingerprint")
    if want is not None and dataset_fingerprint(manifest) != want:
        raise FlipDataError(f"{where} is not the dataset this export was trained on (fingerprint "
                            f"{dataset_fingerprint(manifest)}, the export's {want})", path=str(folder))
    return manifest


def _load_parts(folder: Path, cfg: Any, manifest: Any) -> tuple[torch.Tensor, nn.Module]:
    """The feature table and the trained ID model, each file checked against its SHA-256."""
    from flip_dist.checkpoints import load_module, load_state_file
    from flip_dist.models.embedding import TABLE_NAME
    from flip_dist.models.id_models import build_id_model

    m = cfg.model
    id_model = build_id_model(m.id_model, manifest.num_fields, m.embed_dim, **m.id_params)
    load_module(folder, "id_model", id_model)
    if not (folder / "embedding.pt").is_file():
        raise FlipDataError("export has no embedding.pt (the feature table)", path=str(folder))
    table = load_state_file(folder, "embedding.pt")[f"ebc.embedding_bags.{TABLE_NAME}.weight"]
    if tuple(table.shape) != (manifest.num_features, m.embed_dim):
        raise FlipDataError(f"feature table is {tuple(table.shape)}, the config and dataset say "
                            f"({manifest.num_features}, {m.embed_dim})", path=str(folder / "embedding.pt"))
    if (folder / "heads.pt").is_file() and load_state_file(folder, "heads.pt"):
        # flip_id's dense module has no weights of its own; any here would be left out of the artifact
        raise FlipDataError("heads.pt holds weights a flip_id model does not have", path=str(folder / "heads.pt"))
    return table, id_model.eval()


def _reference(table: torch.Tensor, id_model: nn.Module, fields: list[str], ids: torch.Tensor) -> torch.Tensor:
    """The finetuning forward's logit (TorchRec lookup, FlipFinetuneDense in flip_id) on `ids`, with
    a table of only the rows `ids` use (the whole table would be copied for a handful of rows)."""
    from flip_dist.models.embedding import TABLE_NAME, FeatureEmbedding, feature_kjt
    from flip_dist.models.flip import FlipFinetuneDense

    rows, local = torch.unique(ids, return_inverse=True)
    emb = FeatureEmbedding(len(rows), fields, table.shape[1])
    with torch.no_grad():
        emb.ebc.embedding_bags[TABLE_NAME].weight.copy_(table[rows])
    dense = FlipFinetuneDense("flip_id", id_model, None, None).eval()
    B = ids.shape[0]
    out = dense(emb=emb(feature_kjt(local, fields)), input_ids=torch.zeros(B, 1, dtype=torch.long),
                attention_mask=torch.ones(B, 1, dtype=torch.long), labels=torch.zeros(B))
    return out["logit"]


@contextmanager
def _torch_linear() -> Iterator[None]:
    """torch's own F.linear while compiling: a DeepSpeed ZeRO-3 engine built earlier in this
    process replaces it for good with a Python autograd Function ("this will persist unless
    manually reset"), which a trace records and TorchScript then cannot save."""
    import torch.nn.functional as F

    patched = F.linear
    F.linear = torch._C._nn.linear
    try:
        yield
    finally:
        F.linear = patched


def _compile(scorer: IdScorer, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """torch.jit.script where the ID model allows it (today none does: their `from __future__`
    annotations defeat the compiler), else a trace: the models' control flow does not depend on
    the data, and _verify checks batch sizes other than the traced one."""
    with _torch_linear():
        try:
            return torch.jit.script(scorer), "script"
        except Exception:        # e.g. an f-string error message TorchScript cannot compile
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                return torch.jit.trace(scorer, example), "trace"


def _verify(artifact: torch.jit.ScriptModule, table: torch.Tensor, id_model: nn.Module, fields: list[str],
            where: str) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows in CHECK_ROWS:
            ids = torch.randint(0, table.shape[0], (rows, len(fields)), generator=gen)
            got, want = artifact(ids), _reference(table, id_model, fields, ids)
            if got.shape != want.shape or not torch.allclose(got, want, atol=ATOL, rtol=1e-5):
                raise RuntimeError(f"{where}: the serving artifact's logits differ from the finetuning forward's "
                                   f"(batch {rows}, shapes {tuple(got.shape)} / {tuple(want.shape)})")


def export_id(finetune_export: str | Path, out: str | Path, data: str | Path | None = None) -> Path:
    """Write `out/model.pt` (TorchScript: feature_ids (B, F) int64 -> logits (B,)) and
    `out/serving.json` from a finetune.mode=flip_id export; `data` is the processed dataset it was
    trained on when the path in its meta.json is not valid here. `out` appears whole or not at all,
    and replaces only an earlier serving folder (one holding serving.json)."""
    from flip_dist.checkpoints import read_meta
    from flip_dist.config import FlipConfig
    from flip_dist.io_atomic import atomic_output_dir, sha256_file, write_json_atomic

    folder = Path(finetune_export)
    meta = read_meta(folder)
    _check_mode(folder, meta)
    cfg = FlipConfig.from_dict(meta["config"])
    manifest = _manifest(folder, meta, data)
    fields = list(manifest.fields)
    table, id_model = _load_parts(folder, cfg, manifest)
    scorer = IdScorer(table, id_model).eval()
    artifact, method = _compile(scorer, torch.zeros(2, len(fields), dtype=torch.long))
    _verify(artifact, table, id_model, fields, str(folder))
    spec = {"format": FORMAT, "input": {"name": "feature_ids", "dtype": "int64", "shape": ["B", len(fields)]},
            "output": {"name": "logit", "shape": ["B"], "prob": "sigmoid(logit)"},
            "fields": fields, "num_fields": len(fields), "num_features": manifest.num_features,
            "embed_dim": cfg.model.embed_dim, "id_model": cfg.model.id_model, "id_params": dict(cfg.model.id_params),
            "dataset": manifest.dataset, "dataset_fingerprint": meta.get("dataset_fingerprint"),
            "source_export": str(folder.resolve()), "source_steps": meta.get("steps"),
            "source_runtime": meta.get("runtime"), "compiled_with": method, "torch": torch.__version__}
    with atomic_output_dir(out, overwrite=True, marker=SERVING_JSON) as tmp:
        torch.jit.save(artifact, str(tmp / MODEL_FILE), _extra_files={SPEC_ENTRY: json.dumps(spec)})
        write_json_atomic(tmp / SERVING_JSON, {**spec, "model_file": MODEL_FILE,
                                               "sha256": sha256_file(tmp / MODEL_FILE),
                                               "bytes": (tmp / MODEL_FILE).stat().st_size})
        _verify(load_artifact(tmp)[0], table, id_model, fields, str(tmp / MODEL_FILE))   # as score reads it
    return Path(out)

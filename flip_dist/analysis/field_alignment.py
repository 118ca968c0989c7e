"""RQ5 (paper Sec. V-F, Fig. 9): does pretraining align the two modalities field by field?

For each sampled test row, mask one field at a time in each modality, encode with the PLM and the
ID model, project both as ICL does, and compare every text variant with every tabular variant. If
the model keeps a one-to-one field correspondence, the pair that lost the *same* field is the most
similar: the matrix has a bright diagonal, and `gap` (diagonal mean - off-diagonal mean) > 0."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flip_dist.config import FlipConfig
from flip_dist.data.batches import Batch, ShardReader
from flip_dist.data.vocab import MASK_ID
from flip_dist.errors import FlipConfigError, FlipDataError

log = logging.getLogger(__name__)

# Sequences per PLM call: F masked copies of a chunk of rows go through together.
PLM_BATCH = 128


def analysis_config(cfg: FlipConfig, init: str | Path | None) -> FlipConfig:
    """The pretraining config that rebuilds the model `init` was trained as (its own `model`
    section, objectives and seed, from its meta.json, so that its weights fit), started from
    `init`; with init None, `cfg` itself: the model such a run starts from. The objectives are
    switched to `full` when they have no ICL, since the analysis reads the ICL projections (they
    are then random: see `icl_head` in the result)."""
    from flip_dist.checkpoints import read_meta
    from flip_dist.models.objectives import objectives

    data = cfg.to_dict()
    if init is not None:
        theirs = read_meta(init).get("config") or {}
        if theirs.get("model"):
            data["model"] = theirs["model"]
        for key in ("objectives", "seed"):
            if key in theirs.get("pretrain", {}):
                data["pretrain"][key] = theirs["pretrain"][key]
    if not objectives(data["pretrain"]["objectives"]).icl:
        data["pretrain"]["objectives"] = "full"
    data["pretrain"]["init"] = str(init) if init is not None else None
    return FlipConfig.from_dict(data)


def sample_rows(data_dir: str | Path, rows: int, seed: int) -> Batch:
    """`rows` test rows drawn without replacement by `seed` (all of them when fewer), in file order."""
    reader = ShardReader(data_dir, "test")
    if len(reader) == 0:
        raise FlipDataError("the test split has no rows to analyse", path=str(data_dir))
    n = min(rows, len(reader))
    idx = np.sort(np.random.default_rng(seed).choice(len(reader), size=n, replace=False))
    return reader.take(idx)


def mask_text_field(input_ids: torch.Tensor, field_spans: torch.Tensor, field: int, mask_token_id: int) -> torch.Tensor:
    """Every token of field `field`'s value replaced by [MASK], as the pretraining's field-level
    masking does for a chosen field (paper IV-C1); a value cut by truncation leaves the row as is."""
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    start, end = field_spans[:, field, 0:1], field_spans[:, field, 1:2]
    return input_ids.masked_fill((pos >= start) & (pos < end), mask_token_id)


def mask_tab_field(feature_ids: torch.Tensor, field: int) -> torch.Tensor:
    """Field `field`'s feature replaced by the shared <MASK> id (paper IV-C1)."""
    out = feature_ids.clone()
    out[:, field] = MASK_ID
    return out


def _project(icl: torch.nn.Module, x: torch.Tensor, side: str) -> torch.Tensor:
    """z = Norm(Linear(x)), the ICL head's own projection of one side (Eq. 11-12's z_text, z_tab)."""
    if side == "text":
        return icl._z(x, icl.text_proj, icl.ln_text).float()
    return icl._z(x, icl.tab_proj, icl.ln_tab).float()


@torch.no_grad()
def masked_projections(model: Any, batch: Batch, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_text, z_tab), each (F, N, d): z of every row with field f masked in that modality only."""
    dense, sparse, icl = model.dense, model.sparse, model.dense.icl
    F = batch.feature_ids.shape[1]
    chunk = max(1, PLM_BATCH // F)
    texts, tabs = [], []
    for lo in range(0, len(batch), chunk):
        ids, att = batch.input_ids[lo:lo + chunk], batch.attention_mask[lo:lo + chunk]
        spans, fids = batch.field_spans[lo:lo + chunk], batch.feature_ids[lo:lo + chunk]
        n = ids.shape[0]
        masked = torch.cat([mask_text_field(ids, spans, f, mask_token_id) for f in range(F)])      # (F*n, L)
        w_cls = dense.encode_text(masked, att.repeat(F, 1))[:, 0]                               # [CLS] = w_i1
        texts.append(_project(icl, w_cls, "text").view(F, n, -1))
        v, _ = dense.id_model(sparse.embed(torch.cat([mask_tab_field(fids, f) for f in range(F)])))
        tabs.append(_project(icl, v, "tab").view(F, n, -1))
    return torch.cat(texts, dim=1), torch.cat(tabs, dim=1)


def similarity_summary(matrix: np.ndarray) -> dict[str, Any]:
    """gap = mean(diagonal) - mean(off-diagonal) of S; in how many rows / columns S peaks on the
    diagonal; the largest |interaction| (0 when masking a text field and a tabular field shift S
    independently, e.g. when one side ignores which field is masked)."""
    F = matrix.shape[0]
    diag = np.diag(matrix)
    off = matrix[~np.eye(F, dtype=bool)]
    return {"gap": float(diag.mean() - off.mean()), "diagonal_mean": float(diag.mean()),
            "off_diagonal_mean": float(off.mean()),
            "diagonal_is_row_max": int(np.sum(matrix.argmax(axis=1) == np.arange(F))),
            "diagonal_is_column_max": int(np.sum(matrix.argmax(axis=0) == np.arange(F))),
            "interaction_max_abs": float(np.abs(interaction(matrix)).max())}


def field_similarity(cfg: FlipConfig, data_dir: str | Path, init: str | Path | None, rows: int = 256,
                     seed: int = 0) -> dict[str, Any]:
    """The field-by-field similarity matrix of paper Fig. 9 for the model pretrained into `init`
    (a pretraining export folder), or, with init None, the model before pretraining (the PLM's own
    weights, the tables and heads as a pretraining run with `cfg` initialises them: seeded by
    pretrain.seed).

    What is computed (paper V-F): for `rows` test rows drawn with `seed`, and each field f, the
    text with the tokens of f's value replaced by [MASK] and the features with f's id replaced by
    the shared <MASK> id 1 are encoded by the PLM ([CLS], w_i1) and the ID model (v_i), then mapped
    by the ICL head's linear layers and normalization layer to z^text_(f), z^tab_(f) (Eq. 11-12).
    S[i, j] = mean over rows of sim(z^text_(i), z^tab_(j)), sim the dot product as in Eq. 11-12 and
    Fig. 9 (with model.icl_norm=l2 this is the cosine). Rows: the text field masked; columns: the
    tabular field masked. `gap` = mean(diag S) - mean(off-diagonal S): > 0 when a pair missing the
    same field is the more similar one. Runs in this process, on CPU, in eval mode (no dropout)."""
    from flip_dist.data.manifest import read_manifest
    from flip_dist.models.objectives import objectives
    from flip_dist.train.local import build_local

    if rows < 1:
        raise FlipConfigError(f"rows={rows}: sample at least one test row")
    run_cfg = analysis_config(cfg, init)
    manifest = read_manifest(data_dir)
    _, model = build_local(run_cfg, "pretrain", data_dir)
    model.dense.eval()
    trained_icl = init is not None and objectives(_export_objectives(init)).icl
    batch = sample_rows(data_dir, rows, seed)
    z_text, z_tab = masked_projections(model, batch, manifest.text_mask_id)
    matrix = torch.einsum("ind,jnd->ij", z_text.double(), z_tab.double()).numpy() / len(batch)
    spans = batch.field_spans
    return {
        "init": str(init) if init is not None else None,
        "objectives": _export_objectives(init) if init is not None else None,
        "fields": list(manifest.fields),
        "rows": len(batch), "seed": seed,
        "similarity": f"dot product of the ICL projections (Eq. 11-12, normalization: {run_cfg.model.icl_norm})",
        "icl_head": "pretrained" if trained_icl else "random init",
        "matrix": matrix.tolist(),
        **similarity_summary(matrix),
        # rows where truncation had cut a field's value: its text variant equals the unmasked text
        "truncated_rows": [int(n) for n in (spans[..., 1] <= spans[..., 0]).sum(0).tolist()],
    }


def _export_objectives(init: str | Path) -> str:
    from flip_dist.checkpoints import read_meta

    return (read_meta(init).get("config") or {}).get("pretrain", {}).get("objectives", "full")


def interaction(matrix: np.ndarray) -> np.ndarray:
    """S less its row and column means (plus the overall mean): what is left once "masking text
    field i" and "masking tabular field j" each shift every pair alike. `gap` reads only this part
    (additive shifts cancel in it); its diagonal mean is gap * (F - 1) / F."""
    return matrix - matrix.mean(axis=1, keepdims=True) - matrix.mean(axis=0, keepdims=True) + matrix.mean()


def _heat_map(ax: Any, plt: Any, m: np.ndarray, fields: list[str], title: str, digits: int, **style: Any) -> Any:
    """One annotated F x F map (digits 0: no numbers), the diagonal outlined."""
    F = len(fields)
    image = ax.imshow(m, **style)
    ax.set_xticks(range(F), [f"Tab-{f}" for f in fields], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(F), [f"Text-{f}" for f in fields], fontsize=8)
    ax.set_xlabel("tabular field masked")
    ax.set_ylabel("text field masked")
    ax.set_title(title, fontsize=10)
    if digits:
        norm = image.norm
        for i in range(F):
            for j in range(F):
                dark = 0.25 < norm(m[i, j]) < 0.75 if style.get("cmap") == "RdBu_r" else norm(m[i, j]) > 0.5
                ax.text(j, i, f"{m[i, j]:.{digits}g}", ha="center", va="center", fontsize=6.5,
                        color="black" if dark else "white")
    for k in range(F):          # outline the diagonal: the pairs that lost the same field
        ax.add_patch(plt.Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
    return image


def plot_field_similarity(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """One heat map per entry of `results` (name -> `field_similarity` output, e.g. 'before
    pretraining', 'after pretraining'), side by side on one colour scale, so that both the
    diagonal within a map and the change between maps can be read. x: the tabular field masked,
    y: the text field masked, as Fig. 9's Tab-f / Text-f. A second row shows each map's
    `interaction` (one symmetric scale): the raw maps are dominated by row and column shifts
    (masking some fields moves every pair), which hide the diagonal that `gap` measures."""
    from flip_dist.analysis.figures import pyplot, save_figure_atomic

    if not results:
        raise ValueError("no results to plot")
    plt = pyplot()
    mats = {name: np.asarray(r["matrix"], dtype=float) for name, r in results.items()}
    inter = {name: interaction(m) for name, m in mats.items()}
    lo, hi = min(float(m.min()) for m in mats.values()), max(float(m.max()) for m in mats.values())
    bound = max(float(np.abs(m).max()) for m in inter.values()) or 1.0
    n, F = len(mats), next(iter(mats.values())).shape[0]
    side = max(3.8, 0.55 * F + 2.0)
    fig, axes = plt.subplots(2, n, figsize=(side * n + 1.5, 2 * side + 0.8), squeeze=False, layout="constrained")
    top = bottom = None
    for k, (name, r) in enumerate(results.items()):
        fields, digits = list(r["fields"]), 3 if F <= 10 else 0
        top = _heat_map(axes[0, k], plt, mats[name], fields,
                        f"{name}\ngap (diag - off-diag) = {r['gap']:.3g}, {r['rows']} rows", digits,
                        cmap="viridis", vmin=lo, vmax=hi)
        bottom = _heat_map(axes[1, k], plt, inter[name], fields,
                           f"{name}: S - row mean - column mean\n(diagonal mean = gap x (F-1)/F)", min(digits, 2),
                           cmap="RdBu_r", vmin=-bound, vmax=bound)
    fig.colorbar(top, ax=list(axes[0]), shrink=0.85, label="S: mean dot product of the ICL projections")
    fig.colorbar(bottom, ax=list(axes[1]), shrink=0.85, label="interaction (same units)")
    fig.suptitle("RQ5: similarity of masked text vs masked tabular representations (paper Fig. 9)", fontsize=11)
    out = save_figure_atomic(fig, path)
    plt.close(fig)
    return out

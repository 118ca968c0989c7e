"""RQ6 (paper Sec. V-G, Fig. 2 and 8): do the learned feature embeddings collapse?

A table whose rows "collapse into a narrow cone" (the representation degeneration problem) has
one or a few directions that carry nearly all its variance: after centring, the top singular
values take most of the sum and the effective rank is small. FLIP's feature-level objectives are
meant to keep the table spread out; ICL alone is not. The SVD goes through the D x D Gram matrix
(float64), so a table of millions of rows costs one pass over it, never an N x N or N x D copy."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flip_dist.errors import FlipDataError


def _export_data_dir(export: str | Path, data_dir: str | Path | None) -> Path:
    from flip_dist.checkpoints import read_meta

    folder = data_dir if data_dir is not None else read_meta(export).get("data")
    if folder is None:
        raise FlipDataError("the export names no dataset folder (meta.json 'data'); pass data_dir", path=str(export))
    return Path(folder)


def load_feature_table(export: str | Path, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, ids): the export's learned feature embeddings without the reserved rows 0..F+1
    (padding, <MASK>, one OOV a field: never a feature value, and <MASK> is trained apart from
    every value) and their global feature ids. The dataset folder (`data_dir`, else the one the
    export names) gives F."""
    from flip_dist.checkpoints import load_state_file
    from flip_dist.data.manifest import read_manifest
    from flip_dist.data.vocab import NUM_RESERVED
    from flip_dist.models.embedding import TABLE_NAME

    path = Path(export)
    if not (path / "embedding.pt").is_file():
        raise FlipDataError("export has no embedding.pt (a FLIP_PLM finetuning has no feature table)", path=str(path))
    weight = load_state_file(path, "embedding.pt")[f"ebc.embedding_bags.{TABLE_NAME}.weight"]
    manifest = read_manifest(_export_data_dir(path, data_dir))
    if weight.shape[0] != manifest.num_features:
        raise FlipDataError(f"the table has {weight.shape[0]} rows, the dataset {manifest.num_features} features: "
                            "another dataset's export?", path=str(path))
    first = NUM_RESERVED + manifest.num_fields
    return weight[first:].double().numpy(), np.arange(first, weight.shape[0])


def centred_svd(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(singular values, right singular vectors as columns, column mean) of the centred rows, both
    in descending order, from the eigen-decomposition of the D x D Gram matrix X^T X = V S^2 V^T."""
    mean = rows.mean(axis=0)
    x = rows - mean
    eig, vecs = np.linalg.eigh(x.T @ x)
    order = np.argsort(eig)[::-1]
    return np.sqrt(np.clip(eig[order], 0.0, None)), vecs[:, order], mean


def spectrum_stats(singular: np.ndarray, top: int) -> dict[str, Any]:
    """Normalised singular values p = s / sum(s); the shares of the top-1 and top-`top` (the
    collapse figures: near 1 when a few directions carry the table); the effective rank
    exp(-sum p log p) (Roy & Vetterli 2007), between 1 (one direction) and D (isotropic)."""
    total = float(singular.sum())
    if total <= 0.0:
        raise FlipDataError("the embedding table is constant after centring: no spectrum to report")
    p = singular / total
    nz = p[p > 0]
    return {"singular_values": singular.tolist(), "normalized_singular_values": p.tolist(),
            "top1_share": float(p[0]), "top_k": int(min(top, len(p))), "top_k_share": float(p[:top].sum()),
            "effective_rank": float(np.exp(-(nz * np.log(nz)).sum())), "dim": int(len(p))}


def embedding_spectrum(exports: Mapping[str, str | Path], top: int = 10,
                       data_dir: str | Path | None = None) -> dict[str, Any]:
    """Per variant (name -> pretraining export folder): the spectrum of its centred feature table
    (see `spectrum_stats`), and how many rows it holds. `data_dir` defaults to each export's own."""
    if not exports:
        raise ValueError("no exports given")
    if top < 1:
        raise ValueError(f"top={top}: the share of at least the top singular value")
    out: dict[str, Any] = {}
    for name, export in exports.items():
        rows, _ = load_feature_table(export, data_dir)
        singular, _, _ = centred_svd(rows)
        out[name] = {"export": str(export), "rows": int(rows.shape[0]), **spectrum_stats(singular, top)}
    return out


def _field_of(ids: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """Field index of each global id from the manifest's block layout (field f: offsets[f]..offsets[f+1])."""
    return np.searchsorted(np.asarray(offsets), ids, side="right") - 1


def plot_embedding_scatter(exports: Mapping[str, str | Path], path: str | Path, max_points: int = 2000,
                           data_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Paper Fig. 2 / 8: each variant's feature embeddings projected on the top two singular
    vectors of its centred table, one panel per variant, coloured by field. At most `max_points`
    rows a panel (drawn with `seed`, the same ids in every panel when the exports share a dataset)."""
    from flip_dist.analysis.figures import pyplot, save_figure_atomic
    from flip_dist.data.manifest import read_manifest

    if not exports:
        raise ValueError("no exports given")
    plt = pyplot()
    n = len(exports)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 1.8, 4.2), squeeze=False)
    legend: dict[str, Any] = {}
    for ax, (name, export) in zip(axes[0], exports.items()):
        rows, ids = load_feature_table(export, data_dir)
        manifest = read_manifest(_export_data_dir(export, data_dir))
        singular, vecs, mean = centred_svd(rows)
        keep = np.random.default_rng(seed).permutation(len(rows))[:max_points]
        xy = (rows[keep] - mean) @ vecs[:, :2]
        fields = _field_of(ids[keep], manifest.field_offsets)
        colours = plt.get_cmap("tab10" if manifest.num_fields <= 10 else "tab20")
        for f, field in enumerate(manifest.fields):
            sel = fields == f
            if sel.any():
                legend[field] = ax.scatter(xy[sel, 0], xy[sel, 1], s=5, alpha=0.6, color=colours(f % colours.N),
                                           label=field, linewidths=0)
        share = singular[:2].sum() / max(singular.sum(), 1e-300)
        ax.set_title(f"{name}\ntop-2 singular values: {100 * share:.0f}% of the sum; {len(keep)} of {len(rows)} rows",
                     fontsize=10)
        ax.set_xlabel("singular direction 1")
        ax.set_ylabel("singular direction 2")
        ax.ticklabel_format(style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    fig.legend(legend.values(), legend.keys(), loc="center right", title="field", markerscale=3, fontsize=8)
    fig.suptitle("RQ6: feature embeddings on their top-2 singular directions (paper Fig. 8)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (4.2 * n + 1.8), 1))
    out = save_figure_atomic(fig, path)
    plt.close(fig)
    return out


def plot_singular_values(spectrum: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Normalised singular values against their index, log y, one line per variant (the output of
    `embedding_spectrum`): a collapsed table falls steeply after the first few."""
    from flip_dist.analysis.figures import pyplot, save_figure_atomic

    if not spectrum:
        raise ValueError("no spectrum to plot")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, s in spectrum.items():
        p = np.asarray(s["normalized_singular_values"], dtype=float)
        ax.plot(np.arange(1, len(p) + 1), np.clip(p, 1e-12, None), marker="o", markersize=3,
                label=f"{name} (top-1 {100 * s['top1_share']:.1f}%, eff. rank {s['effective_rank']:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("normalised singular value  s_k / sum(s)")
    ax.set_title("RQ6: spectrum of the centred feature embedding table", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    out = save_figure_atomic(fig, path)
    plt.close(fig)
    return out

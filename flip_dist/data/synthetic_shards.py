"""Synthetic GoodReads-scale shards written directly in the data contract, for training and
profiling at paper scale without running preprocessing (20M rows, 4.5M features).

Fifteen GoodReads fields; each field's values drawn from a bounded Zipf law; a hidden logistic
model over per-value effects sets the labels, so CTR models have signal to learn. Each feature
value has a fixed token sequence (length and ids derived from its id; the field prompts are the
real tokenizer's tokens), assembled by the same code path as real prompts. Rows are generated
and written in chunks (bounded memory); the first 90% are train, as time-ordered data would be.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from flip_dist.data.manifest import MANIFEST, write_manifest
from flip_dist.data.readers.goodreads import SPEC
from flip_dist.data.shards import split_summary
from flip_dist.data.template import PromptTokenizer
from flip_dist.data.vocab import MASK_ID, NUM_RESERVED, PAD_ID, oov_id
from flip_dist.errors import FlipConfigError
from flip_dist.io_atomic import atomic_output_dir
from flip_dist.text_assets import load_tokenizer, resolve_tokenizer, tokenizer_fingerprint

# Share of the feature budget per field (GoodReads-like), and the most tokens a value takes.
SHARES = {"user_id": 0.24, "book_id": 0.19, "title": 0.19, "genres": 0.004, "average_rating": 0.0005,
          "num_reviews": 0.003, "author_id": 0.07, "author_name": 0.07, "num_pages": 0.0015,
          "is_ebook": 0.0, "format": 0.0, "publisher": 0.03, "publication_year": 0.0002,
          "work_id": 0.19, "media_type": 0.0}
MIN_VALUES = {"is_ebook": 2, "format": 12, "media_type": 3, "average_rating": 300,
              "publication_year": 150, "num_pages": 900, "genres": 40}
MAX_TOKENS = {"title": 10, "author_name": 5, "genres": 9, "publisher": 6, "format": 3}
ZIPF_S = 1.05


def field_sizes(features: int) -> list[int]:
    """Values per field: each field's floor, then the rest of the budget by share."""
    floor = {f: MIN_VALUES.get(f, 1) for f in SPEC.fields}
    rest = features - NUM_RESERVED - len(SPEC.fields) - sum(floor.values())
    if rest < 0:
        raise FlipConfigError(f"features={features} is too small for 15 GoodReads fields "
                              f"(at least {features - rest})")
    total = sum(SHARES.values())
    return [floor[f] + int(rest * SHARES[f] / total) for f in SPEC.fields]


class _Field:
    """One field's values: Zipf sampler, per-value label effect, per-value token sequences."""

    def __init__(self, name: str, n: int, vocab_size: int, rng: np.random.Generator) -> None:
        ranks = np.arange(1, n + 1, dtype=np.float64)
        p = ranks ** -ZIPF_S
        self.cdf = np.cumsum(p / p.sum())
        self.effect = rng.normal(0.0, 0.35, n).astype(np.float32)
        max_tok = MAX_TOKENS.get(name, 3)
        self.lengths = 1 + (np.arange(n) * 2654435761 % max_tok).astype(np.int64)
        total = int(self.lengths.sum())
        self.tokens = rng.integers(1000, vocab_size, total, dtype=np.int64).astype(np.int32)

    def draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, rng.random(m)), len(self.cdf) - 1)


def write_synthetic_shards(out_dir: str | Path, rows: int, features: int = 4_565_429, *,
                           tokenizer: str = "minilm", max_length: int = 256, seed: int = 0,
                           rows_per_shard: int = 500_000, train_ratio: float = 0.9,
                           overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write a processed dataset folder (manifest, shards, vocab, frequencies); return the manifest."""
    if rows < 10:
        raise FlipConfigError("rows must be >= 10")
    rng = np.random.default_rng(seed)
    hf = load_tokenizer(tokenizer)
    prompts = PromptTokenizer(hf, SPEC.field_texts, max_length)
    sizes = field_sizes(features)
    offsets = np.concatenate([[NUM_RESERVED + len(sizes)], NUM_RESERVED + len(sizes) + np.cumsum(sizes)])
    fields = [_Field(f, n, len(hf), rng) for f, n in zip(SPEC.fields, sizes)]
    n_train = int(rows * train_ratio)
    counts = np.zeros(int(offsets[-1]), dtype=np.int64)
    with atomic_output_dir(out_dir, overwrite=overwrite, marker=MANIFEST) as out:
        (out / "train").mkdir()
        (out / "test").mkdir()
        done = 0
        with tqdm(total=rows, unit="rows", desc="synthetic shards", disable=not progress) as bar:
            while done < rows:
                m = min(rows_per_shard, rows - done, max(n_train - done, 0) or rows_per_shard)
                idx = [f.draw(rng, m) for f in fields]
                logit = -1.0 + sum(f.effect[i] for f, i in zip(fields, idx))
                label = (rng.random(m) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
                fids = np.stack([offsets[k] + i for k, i in enumerate(idx)], 1).astype(np.int32)
                enc = prompts.assemble([(i, f.lengths, f.tokens) for f, i in zip(fields, idx)])
                split = "train" if done < n_train else "test"
                if split == "train":
                    counts += np.bincount(fids.reshape(-1), minlength=len(counts))
                table = pa.table({
                    "label": pa.array(label),
                    "feature_ids": pa.FixedSizeListArray.from_arrays(pa.array(fids.reshape(-1)), len(fields)),
                    "input_ids": enc.input_ids,
                    "field_spans": pa.FixedSizeListArray.from_arrays(pa.array(enc.spans.reshape(-1)), 2 * len(fields)),
                    "num_truncated_fields": pa.array(enc.num_truncated.astype(np.int8)),
                    "row_id": pa.array(np.arange(done, done + m, dtype=np.int64)),
                })
                pq.write_table(table, out / split / f"part-{done // rows_per_shard:05d}-{done:010d}.parquet")
                done += m
                bar.update(m)
        _write_vocab(out, sizes, offsets, counts)
        summary = split_summary(out)
        manifest = {
            "format_version": 1, "dataset": "goodreads-synthetic", "synthetic": True,
            "num_samples": rows, "num_train": summary["train"]["rows"], "num_test": summary["test"]["rows"],
            "num_fields": len(fields), "num_features": int(offsets[-1]), "fields": list(SPEC.fields),
            "field_texts": list(SPEC.field_texts), "field_offsets": [int(x) for x in offsets],
            "special_ids": {"pad": PAD_ID, "mask": MASK_ID, "oov": [oov_id(i) for i in range(len(fields))]},
            "tokenizer": str(resolve_tokenizer(tokenizer)), "tokenizer_name": tokenizer,
            "tokenizer_fingerprint": tokenizer_fingerprint(hf),
            "text_vocab_size": len(hf), "text_pad_id": hf.pad_token_id, "text_mask_id": hf.mask_token_id,
            "max_length": max_length, "label_rule": "synthetic: logistic in per-value effects",
            "split": {"rule": "first 90% of rows train", "train_ratio": train_ratio, "seed": seed},
            "positive_rate": {s: round(v["positives"] / max(v["rows"], 1), 6) for s, v in summary.items()},
            "rows_with_truncated_fields": {s: v["truncated"] for s, v in summary.items()},
            "files": {"vocab": "vocab.parquet", "feature_counts": "feature_counts.npy",
                      "train": "train/", "test": "test/"},
        }
        write_manifest(out, manifest)
    return manifest


def _write_vocab(out: Path, sizes: list[int], offsets: np.ndarray, counts: np.ndarray) -> None:
    F = len(sizes)
    field = ["", ""] + list(SPEC.fields) + [f for f, n in zip(SPEC.fields, sizes) for _ in range(n)]
    value = ["<PAD>", "<MASK>"] + ["<OOV>"] * F + [f"{f}#{i}" for f, n in zip(SPEC.fields, sizes) for i in range(n)]
    pq.write_table(pa.table({"feature_id": pa.array(np.arange(len(counts), dtype=np.int64)),
                             "field": pa.array(field, pa.string()), "value": pa.array(value, pa.string()),
                             "count": pa.array(counts)}), out / "vocab.parquet")
    np.save(out / "feature_counts.npy", counts)

"""Raw files -> FLIP shards (the data contract that flip_dist.data.shards.validate_dataset checks),
as Ray work in five stages:

1. parse: Ray tasks turn raw parts (files or line-aligned byte ranges) into staging Parquet;
2. split: the driver reads only the sort keys and finds the 90% cut (chronological, or seeded);
3. vocabulary: Ray tasks, each over a group of fields, count train values over the staging files
   and keep the frequent ones; the driver lays the fields' blocks end to end;
4. tokenize vocabulary: Ray tasks tokenize every vocabulary value once;
5. encode: a Ray Data pass maps each staging file to feature ids, token ids and field spans and
   writes its test shard; its train rows are dealt at random into buckets, each then written
   as one shard in a seeded random row order (TrainOrder: batches read in order are i.i.d.).
Memory per worker is bounded by a staging file / batch, not by the dataset. Everything is built
in a hidden temporary folder renamed into place at the end, so a failed run leaves nothing that
looks complete."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flip_dist.config import PreprocessConfig
from flip_dist.data.bad_rows import BadRows
from flip_dist.data.manifest import MANIFEST, write_manifest
from flip_dist.data.readers import get_reader
from flip_dist.data.readers.base import DatasetSpec
from flip_dist.data.readers.guarded import ReadLimits
from flip_dist.data.shards import split_summary
from flip_dist.data.template import PromptTokenizer, TokenTable
from flip_dist.data.vocab import MASK_ID, PAD_ID, FieldValues, Vocabulary, merge_counts, oov_id, value_counts
from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import atomic_output_dir
from flip_dist.parallel import one_cpu_worker, run_bounded
from flip_dist.text_assets import load_tokenizer, resolve_tokenizer

log = logging.getLogger(__name__)
STAGING = "_staging"


@dataclass(frozen=True)
class SplitCut:
    """Rows sorting before (order, row_id) are train: the first `train_ratio` of the sort."""

    order: int
    row_id: int

    def is_train(self, table: pa.Table) -> np.ndarray:
        o = table["order"].to_numpy()
        r = table["row_id"].to_numpy()
        return (o < self.order) | ((o == self.order) & (r < self.row_id))


# ---------------------------------------------------------------- stage 1: parse
def _parse_part(dataset: str, part: Any, context: Any, seed: int, out_dir: str,
                staging_rows: int, group_rows: int, limits: ReadLimits) -> tuple[list[str], int, BadRows, dict]:
    """Parse one raw part into staging files of about `staging_rows` rows: a file is the unit of
    work of the later stages, so their parallelism does not depend on how the raw data came,
    and a part is streamed, so a huge one (a .gz file) never sits in memory whole. `limits`
    bound what one raw line or one .gz may cost."""
    reader = get_reader(dataset)
    schema = reader.staging_schema()
    files, n, bad, stats = [], 0, BadRows(), {}
    for j, res in enumerate(reader.iter_part(part, context, seed, staging_rows, limits)):
        if res.table.schema != schema:
            raise FlipDataError(f"reader produced schema {res.table.schema}, expected {schema}", path=part.path)
        path = str(Path(out_dir) / f"part-{part.index:05d}-{j:04d}.parquet")
        pq.write_table(res.table, path, row_group_size=group_rows)
        files.append(path)
        n += res.table.num_rows
        bad.merge(res.bad)
        for k, v in res.stats.items():
            stats[k] = stats.get(k, 0) + v
    return files, n, bad, stats


def balanced_parts(reader: Any, raw: Path, target_bytes: int, workers: int) -> list[Any]:
    """The reader's parts, re-cut to a multiple of `workers` where parts are byte ranges of about
    `target_bytes`, so that the last round of parse tasks keeps every worker busy."""
    parts = reader.parts(raw, target_bytes)
    if len(parts) % workers == 0:
        return parts
    total = sum((p.end if p.end >= 0 else Path(p.path).stat().st_size) - p.start for p in parts)
    n = -(-len(parts) // workers) * workers
    return reader.parts(raw, max(1 << 10, -(-total // n)))


# ---------------------------------------------------------------- stage 2: split
def find_cut(files: list[str], train_ratio: float) -> tuple[SplitCut, int, int]:
    """The (order, row_id) of the first test row: a selection (np.partition), not a sort."""
    keys = pq.ParquetDataset(files).read(columns=["order", "row_id"])
    n = keys.num_rows
    n_train = int(n * train_ratio)
    if n_train == 0 or n_train == n:
        raise FlipDataError(f"{n} usable rows are too few to split {train_ratio:.0%}/{1 - train_ratio:.0%}",
                            path=str(Path(files[0]).parent) if files else None)
    order, row_id = keys["order"].to_numpy(), keys["row_id"].to_numpy()
    cut_order = np.partition(order, n_train)[n_train]
    before = int(np.count_nonzero(order < cut_order))
    cut_row = np.sort(row_id[order == cut_order])[n_train - before]   # ties go by row id
    return SplitCut(int(cut_order), int(cut_row)), n_train, n - n_train


# ---------------------------------------------------------------- stage 3: vocabulary
def _count_fields(fields: tuple[str, ...], files: list[str], cut: SplitCut, min_count: int) -> list[FieldValues]:
    """Count some fields' train values file by file (those columns and the sort keys read once per
    file) and keep the values seen `min_count` times. A field's partial counts are merged whenever
    they outgrow its merged table, so memory follows distinct values, not rows."""
    merged: dict[str, list[pa.Table]] = {f: [] for f in fields}
    pending: dict[str, list[pa.Table]] = {f: [] for f in fields}
    for path in files:
        t = pq.read_table(path, columns=[*fields, "order", "row_id"])
        t = t.filter(pa.array(cut.is_train(t)))
        for f in fields:
            pending[f].append(value_counts(t[f]))
            if sum(c.num_rows for c in pending[f]) > max(sum(c.num_rows for c in merged[f]), 1 << 20):
                merged[f], pending[f] = [merge_counts(merged[f] + pending[f])], []
    return [FieldValues.keep(f, merge_counts(merged[f] + pending[f]), min_count) for f in fields]


def field_groups(files: list[str], fields: tuple[str, ...], n_groups: int) -> list[tuple[str, ...]]:
    """Fields dealt into `n_groups` tasks of about equal work, biggest column first (Parquet's
    uncompressed size in the first staging file stands for the field's share of the work)."""
    meta = pq.ParquetFile(files[0]).metadata
    names = meta.schema.to_arrow_schema().names
    size = {f: sum(meta.row_group(g).column(names.index(f)).total_uncompressed_size
                   for g in range(meta.num_row_groups)) for f in fields}
    groups: list[list[str]] = [[] for _ in range(min(n_groups, len(fields)))]
    load = [0] * len(groups)
    for f in sorted(fields, key=lambda f: -size[f]):
        i = load.index(min(load))
        groups[i].append(f)
        load[i] += size[f]
    return [tuple(g) for g in groups]


def build_vocabulary(files: list[str], fields: tuple[str, ...], cut: SplitCut, min_count: int,
                     workers: int) -> Vocabulary:
    """Tasks over groups of fields (two per worker, for balance); the driver lays the fields'
    blocks end to end."""
    groups = field_groups(files, fields, 2 * workers)
    done = run_bounded(_count_fields, [(g, files, cut, min_count) for g in groups], workers,
                       desc="count train values")
    kept = {fv.field: fv for part in done for fv in part}
    return Vocabulary.from_fields([kept[f] for f in fields])


# ---------------------------------------------------------------- stage 4: encode
@lru_cache(maxsize=4)
def _worker_object(ref: Any) -> Any:
    """An object-store object, fetched once per worker process and kept: the vocabulary's lookup
    arrays, and the prompt tokenizer whose value cache then warms across all of the worker's tasks."""
    import ray

    return ray.get(ref)


def encode_table(table: pa.Table, spec: DatasetSpec, vocab: Vocabulary,
                 tokenizer: PromptTokenizer, known: TokenTable | None = None) -> pa.Table:
    """Staging rows -> contract rows: label, feature_ids, input_ids, field_spans (+ row_id,
    num_truncated_fields)."""
    feature_ids = vocab.encode(table).astype(np.int32)
    prompts = tokenizer(table, spec.fields, feature_ids, known, [oov_id(f) for f in range(len(spec.fields))])
    F = len(spec.fields)
    return pa.table({
        "label": table["label"],
        "feature_ids": pa.FixedSizeListArray.from_arrays(pa.array(feature_ids.reshape(-1)), F),
        "input_ids": prompts.input_ids,
        "field_spans": pa.FixedSizeListArray.from_arrays(pa.array(prompts.spans.reshape(-1)), 2 * F),
        "num_truncated_fields": pa.array(prompts.num_truncated.astype(np.int8)),
        "row_id": table["row_id"],
    })


@dataclass(frozen=True)
class EncodeUnit:
    """One encode task: row groups of staging files, about the same number of rows in every unit,
    so that with N workers no worker is left alone with the last big file."""
    index: int
    groups: tuple[tuple[str, int], ...]   # (staging file, row group)


def plan_encode_units(staging: list[str], target_rows: int, workers: int) -> list[EncodeUnit]:
    """Cut the staging row groups, in order, into a multiple of `workers` units of about equal rows."""
    groups = [(path, g, meta.row_group(g).num_rows) for path in staging
              for meta in [pq.ParquetFile(path).metadata] for g in range(meta.num_row_groups)]
    total = sum(n for *_, n in groups)
    n_units = -(-max(1, -(-total // target_rows)) // workers) * workers
    units: list[list[tuple[str, int]]] = [[] for _ in range(n_units)]
    seen = 0
    for path, g, n in groups:   # a group goes to the unit its middle row falls in
        units[min(n_units - 1, (seen + n // 2) * n_units // max(total, 1))].append((path, g))
        seen += n
    return [EncodeUnit(i, tuple(u)) for i, u in enumerate(units) if u]


@dataclass(frozen=True)
class TrainOrder:
    """How the train split is dealt into shards in a seeded random row order (the paper's batches
    are i.i.d.; raw files come by user or by time, so neighbouring rows are alike): each encode
    unit deals its train rows at random into `buckets` piece folders, then each bucket is
    permuted whole and written as one shard. Together a uniform random order, with memory bounded
    by a bucket (about `staging_rows`), and the same order on every rerun."""

    seed: int
    buckets: int

    def deal(self, table: pa.Table, unit: int, pieces: Path) -> None:
        bucket = np.random.default_rng([self.seed, unit]).integers(self.buckets, size=table.num_rows)
        for b in np.unique(bucket):
            folder = pieces / f"bucket-{b:05d}"
            folder.mkdir(exist_ok=True)
            pq.write_table(table.take(np.flatnonzero(bucket == b)), folder / f"unit-{unit:05d}.parquet")

    def write_bucket(self, pieces: str, b: int, out: str) -> int:
        files = sorted(Path(pieces, f"bucket-{b:05d}").glob("*.parquet"))
        if not files:
            return 0
        table = pa.concat_tables([pq.read_table(f) for f in files])
        order = np.random.default_rng([self.seed, b, 1]).permutation(table.num_rows)
        pq.write_table(table.take(order), Path(out) / f"shard-{b:05d}.parquet")
        return table.num_rows


PIECES = "_train_pieces"


def _encode_unit(dataset: str, cut: SplitCut, refs: list, out: str, order: TrainOrder,
                 unit: EncodeUnit) -> dict[str, int]:
    """Encode one unit's row groups; write its test rows as one Parquet shard named after the unit
    (so reruns give the same names) and deal its train rows into `order`'s buckets. Returns rows
    per split."""
    spec = get_reader(dataset).spec
    vocab, tokenizer, known = (_worker_object(r) for r in refs)
    parts: dict[str, list[pa.Table]] = {"train": [], "test": []}
    for path, g in unit.groups:
        batch = pq.ParquetFile(path).read_row_group(g)
        encoded = encode_table(batch, spec, vocab, tokenizer, known)
        train = cut.is_train(batch)
        parts["train"].append(encoded.filter(pa.array(train)))
        parts["test"].append(encoded.filter(pa.array(~train)))
    train, test = pa.concat_tables(parts["train"]), pa.concat_tables(parts["test"])
    if test.num_rows:
        pq.write_table(test, Path(out) / "test" / f"shard-{unit.index:05d}.parquet")
    if train.num_rows:
        order.deal(train, unit.index, Path(out) / PIECES)
    return {"train": train.num_rows, "test": test.num_rows}


class _EncodeUnits:
    """Ray Data UDF over unit indices. Writing here, not in a Ray Data write operator, keeps a
    worker one CPU of work end to end: Ray Data's partitioned writer cost twice the encoding itself."""

    def __init__(self, units: list[EncodeUnit], *args: Any) -> None:
        self.units, self.args = units, args  # object refs inside a list: Ray passes them through unresolved

    def __call__(self, batch: pa.Table) -> pa.Table:
        one_cpu_worker()
        rows = [_encode_unit(*self.args, self.units[i]) for i in batch["unit"].to_pylist()]
        return pa.table({"train": [r["train"] for r in rows], "test": [r["test"] for r in rows]})


def _tokenize_values(tokenizer_ref: list, values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _worker_object(tokenizer_ref[0]).tokenize_values(values)


def token_table(vocab: Vocabulary, tokenizer_ref: Any, workers: int) -> TokenTable:
    """Tokenize every vocabulary value once, in parallel Ray tasks, in feature id order. The
    tokenizer comes as an object ref, cached per worker, so the encode stage finds it there."""
    values = vocab.table.sort_by("feature_id")["value"]
    chunk = max(20_000, -(-len(values) // (4 * workers)))   # a few tasks per worker: balance
    pieces = run_bounded(_tokenize_values, [([tokenizer_ref], values.slice(i, chunk).to_pylist())
                                            for i in range(0, len(values), chunk)],
                         workers, desc="tokenize vocabulary")
    return TokenTable.concat(pieces)


def _encode_and_write(cfg: PreprocessConfig, staging: list[str], cut: SplitCut, n_train: int,
                      vocab: Vocabulary, tokenizer_ref: Any, known: TokenTable, out: Path) -> None:
    """One Ray Data pass over balanced encode units, `num_workers` at a time, then one task per
    train bucket (TrainOrder); the manifest counts the written rows from the shards."""
    # Ray Data's default fetches each finished task's block metadata on a helper thread that waits
    # on all pending tasks with a 0.1 s timeout: with a few long tasks, every worker then idled
    # ~0.15 s between units (8% on two workers). The inline path, chosen when ray.data is first
    # imported, halved that.
    os.environ.setdefault("RAY_DATA_METADATA_PREFETCH_ON_THREAD", "0")
    import ray.data

    # Ray Data reserves half of the CPUs for downstream operators by default, which on a small
    # node leaves one encode task running; nothing runs downstream here.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    for split in ("train", "test", PIECES):
        (out / split).mkdir()
    units = plan_encode_units(staging, cfg.staging_rows, cfg.num_workers)
    order = TrainOrder(cfg.seed, max(cfg.num_workers, -(-n_train // cfg.staging_rows)))
    args = (cfg.dataset, cut, [ray.put(vocab), tokenizer_ref, ray.put(known)], str(out), order)
    ds = ray.data.from_items([{"unit": u.index} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(_EncodeUnits(units, *args), batch_format="pyarrow", batch_size=1,
                        concurrency=cfg.num_workers, num_cpus=1)
    ray.get(ds.to_arrow_refs())   # runs the pass
    run_bounded(order.write_bucket, [(str(out / PIECES), b, str(out / "train")) for b in range(order.buckets)],
                cfg.num_workers, desc="shuffle train rows")
    shutil.rmtree(out / PIECES)


# ---------------------------------------------------------------- driver
def preprocess(cfg: PreprocessConfig) -> dict[str, Any]:
    """Run the five stages; return the manifest. Needs a Ray session (flip_dist.ray_runtime)."""
    import ray

    reader = get_reader(cfg.dataset)
    spec = reader.spec
    raw = Path(cfg.raw_dir)
    if not raw.is_dir():
        raise FlipDataError("raw data folder does not exist", path=str(raw))
    tok_path = str(resolve_tokenizer(cfg.tokenizer))
    tokenizer = load_tokenizer(tok_path)
    started_at = time.time()
    t0 = last = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[f"{stage}_s"], last = now - last, now

    with atomic_output_dir(cfg.out_dir, overwrite=cfg.overwrite, marker=MANIFEST) as out:
        staging_dir = out / STAGING
        staging_dir.mkdir()
        parts = balanced_parts(reader, raw, cfg.part_bytes, cfg.num_workers)
        limits = ReadLimits.from_config(cfg)
        context_ref = ray.put(reader.context(raw, limits))
        lap("context")
        results = run_bounded(_parse_part, [(cfg.dataset, p, context_ref, cfg.seed, str(staging_dir),
                                             cfg.staging_rows, cfg.batch_rows, limits) for p in parts],
                              cfg.num_workers, desc=f"parse {cfg.dataset}")
        del context_ref
        bad, stats, n_rows, staging = BadRows(), {}, 0, []
        for files, rows, part_bad, part_stats in results:
            staging += files
            n_rows += rows
            bad.merge(part_bad)
            for k, v in part_stats.items():
                stats[k] = stats.get(k, 0) + v
        bad.check(n_rows, cfg.max_bad_fraction)
        lap("parse")

        cut, n_train, n_test = find_cut(staging, cfg.train_ratio)
        vocab = build_vocabulary(staging, spec.fields, cut, cfg.min_count, cfg.num_workers)
        vocab.save(out)
        lap("vocab")
        prompts_ref = ray.put(PromptTokenizer(tokenizer, spec.field_texts, cfg.max_length))
        known = token_table(vocab, prompts_ref, cfg.num_workers)
        lap("tokenize_vocab")
        _encode_and_write(cfg, staging, cut, n_train, vocab, prompts_ref, known, out)
        lap("encode")
        shutil.rmtree(staging_dir)

        if bad.samples:
            with open(out / "quarantine.jsonl", "w", encoding="utf-8") as f:
                for s in bad.samples:
                    f.write(json.dumps(s) + "\n")
        manifest = _manifest(cfg, spec, vocab, tokenizer, tok_path, out, cut, stats, bad, n_rows)
        if (manifest["num_train"], manifest["num_test"]) != (n_train, n_test):
            raise FlipDataError(f"wrote {manifest['num_train']}/{manifest['num_test']} rows, "
                                f"expected {n_train}/{n_test}", path=str(out))
        lap("manifest")
        manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
        manifest["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        manifest["started_at_unix"] = round(started_at, 3)
        write_manifest(out, manifest)
    return manifest


def _manifest(cfg: PreprocessConfig, spec: DatasetSpec, vocab: Vocabulary, tokenizer: Any,
              tok_path: str, out: Path, cut: SplitCut, stats: dict, bad: BadRows,
              n_rows: int) -> dict[str, Any]:
    from flip_dist.text_assets import tokenizer_fingerprint

    summary = split_summary(out)
    split_rows = {s: v["rows"] for s, v in summary.items()}
    positives = {s: v["positives"] for s, v in summary.items()}
    truncated = {s: v["truncated"] for s, v in summary.items()}
    F = len(spec.fields)
    return {
        "format_version": 1,
        "dataset": spec.name,
        "num_samples": split_rows["train"] + split_rows["test"],
        "num_train": split_rows["train"],
        "num_test": split_rows["test"],
        "num_fields": F,
        "num_features": vocab.num_features,
        "fields": list(spec.fields),
        "field_texts": list(spec.field_texts),
        "field_offsets": [int(x) for x in vocab.offsets],
        "special_ids": {"pad": PAD_ID, "mask": MASK_ID, "oov": [oov_id(i) for i in range(F)]},
        "min_count": cfg.min_count,
        "tokenizer": tok_path,
        "tokenizer_name": cfg.tokenizer,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),   # what training checks the PLM against
        "text_vocab_size": len(tokenizer),
        "text_pad_id": tokenizer.pad_token_id,
        "text_mask_id": tokenizer.mask_token_id,
        "max_length": cfg.max_length,
        "template": "<field> is <value>.  (one sentence per field, joined by spaces)",
        "label_rule": spec.label_rule,
        "split": {"rule": spec.split_rule, "train_ratio": cfg.train_ratio, "seed": cfg.seed,
                  "cut_order": cut.order, "cut_row_id": cut.row_id},
        "positive_rate": {s: round(positives[s] / max(split_rows[s], 1), 6) for s in split_rows},
        "rows_with_truncated_fields": truncated,
        "dropped": stats,
        "bad_rows": {**bad.summary(), "quarantine": "quarantine.jsonl" if bad.samples else None,
                     "max_bad_fraction": cfg.max_bad_fraction},
        "raw_dir": str(Path(cfg.raw_dir).resolve()),
        "files": {"vocab": "vocab.parquet", "feature_counts": "feature_counts.npy",
                  "train": "train/", "test": "test/"},
        "columns": {
            "label": "int8 0/1",
            "feature_ids": f"{F} int32 global feature ids, field order",
            "input_ids": "int32 token ids of the prompt (special tokens included, no padding)",
            "field_spans": f"{2 * F} int32: [start, end) token span of each field's value; start == end when truncated",
            "num_truncated_fields": "int8: fields whose value truncation cut",
            "row_id": "int64: raw part << 40 | row within the part",
        },
    }

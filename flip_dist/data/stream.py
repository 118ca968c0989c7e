"""Each rank's training batches, streamed from the shards by Ray Data in an order that depends only
on (seed, epoch, rank): a run resumed at step k trains exactly the rows the uninterrupted run trained
from step k on, with no row lost and none trained twice.

Per epoch the shard files are put in a seeded order and read as a ring from a seeded row offset;
the ring is cut into one contiguous range per rank (equal sizes; `rows % world` rows sit out the
epoch), so a rank reads only the files its range touches. Inside its range a rank shuffles windows
of `window` rows (a multiple of the batch) with a generator seeded by (seed, epoch, rank, window):
a resumed run skips the windows it has finished without reading them, and replays the rest of the
current one exactly."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flip_dist.data.batches import Batch, ShardReader, table_to_batch
from flip_dist.data.shards import shard_files
from flip_dist.errors import FlipDataError


@dataclass(frozen=True)
class ShardFile:
    path: str
    rows: int


def list_shards(folder: str | Path, split: str) -> list[ShardFile]:
    """The split's shard files with their row counts (Parquet footers only)."""
    out = []
    for path in shard_files(folder, split):
        try:
            out.append(ShardFile(path, pq.ParquetFile(path).metadata.num_rows))
        except (OSError, pa.ArrowException) as e:
            raise FlipDataError(f"shard cannot be read: {e}", path=path) from None
    return out


def _is_read_error(error: BaseException) -> bool:
    """An I/O or Arrow error, possibly inside Ray's task-error wrapping."""
    while error is not None:
        if isinstance(error, (OSError, pa.ArrowException)):
            return True
        error = getattr(error, "cause", None) or error.__cause__
    return False


def _distinct_runs(files: list[ShardFile]) -> list[list[ShardFile]]:
    """`files` cut where a file comes again (the ring wrapped): Ray Data reads a path listed twice
    in one read_parquet once, so one dataset a run."""
    runs: list[list[ShardFile]] = [[]]
    for f in files:
        if any(g.path == f.path for g in runs[-1]):
            runs.append([])
        runs[-1].append(f)
    return runs


class RankStream:
    """One rank's share of the train split, epoch by epoch (see the module doc)."""

    def __init__(self, files: list[ShardFile], rank: int, world: int, batch_size: int, window_rows: int,
                 seed: int, pad_id: int) -> None:
        self.files, self.rank, self.world, self.batch, self.seed, self.pad_id = \
            files, rank, world, batch_size, seed, pad_id
        self.window = max(1, -(-window_rows // batch_size)) * batch_size if window_rows else batch_size
        self.rows_per_rank = sum(f.rows for f in files) // world
        self.columns = [c for c in ShardReader.COLUMNS + ["row_id"]
                        if c in pq.ParquetFile(files[0].path).schema_arrow.names] if files else []

    def batches_per_epoch(self) -> int:
        return self.rows_per_rank // self.batch

    def _range(self, epoch: int, skip_rows: int, take_rows: int) -> tuple[list[ShardFile], int]:
        """(the files that hold this rank's rows from `skip_rows` on for `take_rows` rows, in this
        epoch's order; how many rows of the first one to skip). The epoch's sequence is the files in
        a seeded order, read as a ring from a seeded row offset: ranks get other rows every epoch,
        also when there are fewer files than ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.files[i] for i in rng.permutation(len(self.files))]
        total = sum(f.rows for f in order)
        lo = int(rng.integers(total)) + self.rank * self.rows_per_rank + skip_rows
        lo %= total
        hi = lo + take_rows                          # < 2 * total: the ring is at most two passes
        chosen, start, first_offset = [], 0, 0
        for f in order + order:
            if start + f.rows > lo and start < hi:
                if not chosen:
                    first_offset = lo - start
                chosen.append(f)
            start += f.rows
        return chosen, first_offset

    def _rows(self, files: list[ShardFile], offset: int, count: int) -> Iterator[pa.Table]:
        """`count` rows from `offset` into the concatenation of `files`, read by Ray Data in order."""
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True       # the order is the contract
        ctx.enable_progress_bars = False                   # one bar per epoch and rank: noise in the job log
        left = count
        try:
            for run in _distinct_runs(files):
                ds = ray.data.read_parquet([f.path for f in run], columns=self.columns)
                for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                    if offset >= table.num_rows:
                        offset -= table.num_rows
                        continue
                    table = table.slice(offset, left)
                    offset = 0
                    left -= table.num_rows
                    yield table
                    if left == 0:
                        return
        except Exception as e:       # Ray Data wraps the reader's error: name the shards it was reading
            if isinstance(e, FlipDataError) or not _is_read_error(e):
                raise
            missing = [f.path for f in files if not Path(f.path).is_file()]
            raise FlipDataError(f"reading the train shards failed ({type(e).__name__}: {str(e)[:300]})",
                                path=(missing or [f.path for f in files])[0]) from None
        if left:
            raise FlipDataError(f"ran out of rows: {count - left} of {count} read from {len(files)} shard(s) whose "
                                "footers promised more (a shard changed during the run?)", path=files[-1].path)

    def batches(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        """This rank's batches of `epoch`, from batch `skip_batches` on."""
        n_batches = self.batches_per_epoch()
        if skip_batches >= n_batches:
            return
        first_window = skip_batches * self.batch // self.window
        skip_in_window = skip_batches - first_window * self.window // self.batch
        count = n_batches * self.batch - first_window * self.window        # whole batches only
        files, offset = self._range(epoch, first_window * self.window, count)
        pending: list[pa.Table] = []
        buffered, window_index = 0, first_window
        for table in self._rows(files, offset, count):
            pending.append(table)
            buffered += table.num_rows
            while buffered >= self.window:
                rows = pa.concat_tables(pending).combine_chunks()
                pending, buffered = [rows.slice(self.window)], buffered - self.window
                for b in self._shuffled(rows.slice(0, self.window), epoch, window_index):
                    if skip_in_window:
                        skip_in_window -= 1
                        continue
                    yield b
                window_index += 1
        if buffered:
            for b in self._shuffled(pa.concat_tables(pending).combine_chunks(), epoch, window_index):
                if skip_in_window:
                    skip_in_window -= 1
                    continue
                yield b

    def _shuffled(self, rows: pa.Table, epoch: int, window_index: int) -> Iterator[Batch]:
        perm = np.random.default_rng([self.seed, epoch, self.rank, window_index]).permutation(rows.num_rows)
        for start in range(0, rows.num_rows - self.batch + 1, self.batch):
            yield table_to_batch(rows.take(pa.array(perm[start:start + self.batch])), self.pad_id)

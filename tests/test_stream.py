"""Each rank's Ray Data stream (flip_dist.data.stream) on the real ML-100K shards: a function of
(seed, epoch, rank) alone, disjoint and equal shares, every share's rows once, and a resumed stream
(`skip`) that continues exactly where the full one was."""
from __future__ import annotations

import pyarrow.parquet as pq

from flip_dist.data.stream import RankStream, list_shards

B, WINDOW = 32, 1000


def _streams(folder, seed=0):
    files = list_shards(folder, "train")
    return [RankStream(files, rank, 2, B, WINDOW, seed, pad_id=0) for rank in range(2)]


def _ids(stream, epoch, skip=0):
    return [b.row_ids.tolist() for b in stream.batches(epoch, skip)]


def test_ranks_share_the_epoch_exactly_and_the_order_is_seeded(ml100k_processed, ray_local):
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in (ml100k_processed / "train").glob("*.parquet"))
    r0, r1 = _streams(ml100k_processed)
    a, b = _ids(r0, 0), _ids(r1, 0)
    assert len(a) == len(b) == r0.batches_per_epoch() == (n // 2) // B
    flat_a, flat_b = sum(a, []), sum(b, [])
    assert len(set(flat_a)) == len(flat_a) and not set(flat_a) & set(flat_b)     # each row once, disjoint
    assert _ids(r0, 0) == a                                                       # the same again
    assert _ids(r0, 1) != a and sorted(sum(_ids(r0, 1), [])) != sorted(flat_a)   # another epoch, other rows
    assert _ids(_streams(ml100k_processed, seed=1)[0], 0) != a                   # another seed, another order


def test_a_resumed_stream_continues_exactly(ml100k_processed, ray_local):
    r0 = _streams(ml100k_processed)[0]
    full = _ids(r0, 2)
    for skip in (1, 31, 32, 33, len(full) - 1):         # inside, at and across window edges
        assert _ids(r0, 2, skip) == full[skip:], skip


def test_one_rank_reads_the_whole_ring_once(ml100k_processed, ray_local):
    """One rank's epoch starts at a seeded row and wraps round to it: the first shard is read twice
    (its tail, then its head), each part once."""
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in (ml100k_processed / "train").glob("*.parquet"))
    only = RankStream(list_shards(ml100k_processed, "train"), 0, 1, B, WINDOW, 0, pad_id=0)
    rows = sum(_ids(only, 0), [])
    assert len(rows) == (n // B) * B and len(set(rows)) == len(rows)

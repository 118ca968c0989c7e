"""Real BookCrossing (the full dump), end to end. Slow (about a minute of preprocessing and a
27 MB download): run with `bash tools/run_tests.sh -m slow`."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PAPER = {"num_samples": 1_031_171, "num_features": 722_235}   # Table I


@pytest.mark.slow
def test_bookcrossing_counts_next_to_the_paper(ray_local, tmp_path_factory):
    from flip_dist.config import PreprocessConfig
    from flip_dist.data.fetch import fetch
    from flip_dist.data.preprocess import preprocess
    from flip_dist.data.shards import validate_dataset

    raw = fetch("bookcrossing", REPO / "data" / "raw" / "bookcrossing", timeout=3)
    out = tmp_path_factory.mktemp("bx") / "bookcrossing"
    m = preprocess(PreprocessConfig(dataset="bookcrossing", raw_dir=str(raw), out_dir=str(out),
                                    max_length=128, staging_rows=100_000))
    print(f"\nBookCrossing      ours        paper (Table I)\n"
          f"samples      {m['num_samples']:>10,}  {PAPER['num_samples']:>10,}\n"
          f"features     {m['num_features']:>10,}  {PAPER['num_features']:>10,}  (ours: train split only)")
    # 1,149,780 ratings; those whose ISBN is not in BX-Books.csv have no text and are dropped.
    assert m["num_samples"] + m["dropped"]["dropped_unknown_isbn"] + m["bad_rows"]["total"] == 1_149_780
    assert m["num_samples"] == 1_031_178                      # the paper: 1,031,171 (7 fewer)
    assert m["num_fields"] == 8
    assert 690_000 < m["num_features"] < PAPER["num_features"]  # vocabulary from train only
    assert 0.30 < m["positive_rate"]["train"] < 0.33
    validate_dataset(out, max_rows_per_shard=2000)

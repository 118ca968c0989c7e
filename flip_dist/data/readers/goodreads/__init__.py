"""GoodReads, the UCSD Book Graph (Wan & McAuley, RecSys'18) as distributed.

Interactions come in one of two forms (both are read):
- JSON lines, `goodreads_interactions_dedup.json[.gz]` (or another `goodreads_interactions*.json[.gz]`
  such as a genre subset): user_id (hex), book_id (digits), rating (int 0-5), date_added
  ("Mon Aug 01 13:41:57 -0700 2016"), ... The order key is date_added in epoch seconds.
- CSV, `goodreads_interactions.csv` (user_id,book_id,is_read,rating,is_reviewed: integer ids, mapped
  to the real ones by `user_id_map.csv` and `book_id_map.csv`). No time: the split is seeded random.
Book side: `goodreads_books.json[.gz]` is required, and every key read from it must be present
(a missing one is an error naming it). `goodreads_book_authors`, `goodreads_book_genres_initial` and
`goodreads_book_works` (.json[.gz]) are used when present; without them author_name, genres and
media_type are "unknown" for every book. Empty values become "unknown"; only the first author counts;
num_reviews is text_reviews_count (ratings_count counts ratings, not reviews).

Label = rating > 3. Rating 0 means shelved, not rated: dropped (`dropped_rating_0`). Interactions
whose book is not in the books file are dropped (`dropped_unknown_book`). Malformed lines are
skipped and counted with their line number (or byte offset, for parts that start mid-file); so
are lines over `max_line_bytes`, which are never read whole. A .gz is read through GzipGuard: a
file that inflates past `max_inflation` x its size, or a corrupt stream, is an error naming it.
CSV columns are found by header name, in any order; side files admit no bad line (an error names it).

Scale: 228M interactions and 2.3M books in the real data. Plain files split into line-aligned byte
ranges (a line belongs to the part in which it starts); a .gz file is one part (decompress it first
to read it in parallel). Each part is parsed in chunks with Arrow's JSON/CSV readers; a chunk that
Arrow rejects, or that holds a bad row, is re-parsed line by line so every bad row is found and
located. The book side is kept columnar: a sorted int64 array of book ids and an Arrow table of the
13 book-side fields, joined by searchsorted.

Modules: `spec` (fields and rules), `raw_files` (locating and vetting the raw files), `byte_ranges`
(parts and the boundary rule), `dates`, `side_files`, `genres` and `context` (the book side and id
maps), `rows`, `json_interactions` and `csv_interactions` (interaction lines into rows), `reader`.
"""
from __future__ import annotations

from flip_dist.data.readers.goodreads.byte_ranges import line_chunks as _line_chunks
from flip_dist.data.readers.goodreads.dates import DATE_FORMAT, epoch_seconds
from flip_dist.data.readers.goodreads.reader import GoodReadsReader
from flip_dist.data.readers.goodreads.spec import FIELDS, SPEC

__all__ = ["DATE_FORMAT", "FIELDS", "SPEC", "GoodReadsReader", "_line_chunks", "epoch_seconds"]

"""What the GoodReads staging table holds: its fields, how prompts name them, and the label and split rules."""
from __future__ import annotations

from flip_dist.data.readers.base import DatasetSpec

FIELDS = ("user_id", "book_id", "title", "genres", "average_rating", "num_reviews", "author_id",
          "author_name", "num_pages", "is_ebook", "format", "publisher", "publication_year",
          "work_id", "media_type")
FIELD_TEXTS = ("user id", "book id", "title", "genres", "average rating", "number of reviews",
               "author id", "author name", "number of pages", "ebook", "format", "publisher",
               "publication year", "work id", "media type")
BOOK_FIELDS = FIELDS[2:]
UNKNOWN = "unknown"                # the value of an empty or missing book-side field
SPEC = DatasetSpec(
    name="goodreads", fields=FIELDS, field_texts=FIELD_TEXTS,
    label_rule="label = rating > 3; rating 0 (shelved, not rated) dropped; interactions of books "
               "missing from goodreads_books.json dropped",
    split_rule="JSON interactions: chronological, sorted by date_added (epoch seconds, ties by row "
               "id), first 90% train; CSV interactions (goodreads_interactions.csv, no timestamps): "
               "seeded random 90/10 (rows sorted by a splitmix64 key of row id and seed)",
    has_time=True,
)

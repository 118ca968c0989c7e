"""MovieLens-1M (`*.dat`, '::') and MovieLens-100K (`u.data`/`u.user`/`u.item`, or RecBole's
atomic files `ml-100k.inter/.user/.item`). Label = rating > 3; rating == 3 is dropped (paper IV-A).

Ratings lines that are malformed (wrong column count, undecodable, not integers, rating outside
1..5, timestamp outside 0..MAX_TIMESTAMP, unknown user or movie, longer than max_line_bytes) are
bad rows. The side files (users, movies) admit none: the first bad record is an error naming its
file and line. RecBole's files have a header and are read by column name, in any order."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.base import (
    DatasetSpec,
    PartResult,
    RawPart,
    RawReader,
    named_rows,
    require_file,
    row_ids,
    split_delimited,
    staging_table,
)
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits
from flip_dist.errors import FlipDataError

MOVIELENS_FIELDS = ("user_id", "gender", "age", "occupation", "zipcode", "movie_id", "title", "genre")
MOVIELENS_TEXTS = ("user id", "gender", "age", "occupation", "zip code", "movie id", "title", "genre")
GENDER_TEXT = {"M": "male", "F": "female"}
# ML-1M README: age and occupation are codes.
ML1M_AGE = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
            "50": "50-55", "56": "56+"}
ML1M_OCCUPATION = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer"]
# ML-100K README (u.genre): the 19 genre flags of u.item, in order.
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]

# RecBole's atomic files: header names are `name:type`; the columns each file must have.
RECBOLE_INTER = ("user_id", "item_id", "rating", "timestamp")
RECBOLE_USER = ("user_id", "age", "gender", "occupation", "zip_code")
RECBOLE_ITEM = ("item_id", "movie_title", "release_year", "class")
MAX_TIMESTAMP = 4_102_444_800        # 2100-01-01: a later (or negative) epoch second is not a rating time

LABEL_RULE = "label = rating > 3; rating == 3 dropped"
SPLIT_RULE = "chronological: sorted by timestamp (ties by file order), first 90% train"


def _spec(name: str) -> DatasetSpec:
    return DatasetSpec(name, MOVIELENS_FIELDS, MOVIELENS_TEXTS, LABEL_RULE, SPLIT_RULE, True)


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what} is not an integer: {value!r}") from None


def _recbole_name(column: str) -> str:
    """`user_id:token` -> `user_id`."""
    return column.split(":")[0].strip()


def _no_rows(table: dict, path: Path) -> None:
    if not table:
        raise FlipDataError("no data rows", path=str(path))


class _MovieLensReader(RawReader):
    """Shared join + labelling; subclasses parse their own side files and rating lines."""

    def read_part(self, part: RawPart, context: Any, seed: int,
                  limits: ReadLimits = DEFAULT_LIMITS) -> PartResult:
        users, movies = context
        bad = BadRows()
        stats = {"dropped_rating_3": 0}
        labels, order, cols = [], [], {f: [] for f in self.spec.fields}
        path = Path(part.path)
        seen = False
        for lineno, rec in self._ratings(path, bad, part, limits):
            seen = True
            try:
                uid, mid, rating, ts = (_int(v, w) for v, w in
                                        zip(rec, ("user id", "movie id", "rating", "timestamp")))
            except ValueError as e:
                bad.add(str(path), lineno, str(e), self.sep.join(rec))
                continue
            if not 1 <= rating <= 5:
                bad.add(str(path), lineno, f"rating {rating} outside 1..5", self.sep.join(rec))
                continue
            if not 0 <= ts <= MAX_TIMESTAMP:
                bad.add(str(path), lineno, f"timestamp {ts} outside 0..{MAX_TIMESTAMP}", self.sep.join(rec))
                continue
            u, m = users.get(str(uid)), movies.get(str(mid))
            if u is None or m is None:
                bad.add(str(path), lineno, f"unknown {'user' if u is None else 'movie'} id",
                        self.sep.join(rec))
                continue
            if rating == 3:
                stats["dropped_rating_3"] += 1
                continue
            labels.append(int(rating > 3))
            order.append(ts)
            for f, v in zip(("user_id", "gender", "age", "occupation", "zipcode"), (str(uid), *u)):
                cols[f].append(v)
            for f, v in zip(("movie_id", "title", "genre"), (str(mid), *m)):
                cols[f].append(v)
        if not seen and not bad.total and part.start == 0:
            raise FlipDataError("no data rows", path=str(path))
        ids = row_ids(part.index, len(labels))
        table = staging_table(self.spec, labels, np.asarray(order, dtype=np.int64), ids, cols)
        return PartResult(table, bad, stats)


class MovieLens1MReader(_MovieLensReader):
    spec = _spec("ml-1m")
    sep = "::"
    encoding = "latin-1"

    def parts(self, raw_dir: Path, target_bytes: int) -> list[RawPart]:
        for name in ("users.dat", "movies.dat"):
            require_file(raw_dir, name)
        return [RawPart(0, str(require_file(raw_dir, "ratings.dat")))]

    def context(self, raw_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
        bad = BadRows()
        users, movies = {}, {}
        path = require_file(raw_dir, "users.dat")
        for lineno, (uid, gender, age, occ, zipcode) in split_delimited(path, self.encoding, "::", 5, bad,
                                                                        limits=limits):
            try:
                users[uid] = (GENDER_TEXT[gender], ML1M_AGE[age], ML1M_OCCUPATION[int(occ)], zipcode)
            except (KeyError, ValueError, IndexError) as e:
                raise FlipDataError(f"bad user record {gender!r}/{age!r}/{occ!r}", path=str(path), row=lineno) from e
        bad.raise_first()
        _no_rows(users, path)
        path = require_file(raw_dir, "movies.dat")
        for _lineno, (mid, title, genres) in split_delimited(path, self.encoding, "::", 3, bad, limits=limits):
            movies[mid] = (title, ", ".join(genres.split("|")))
        bad.raise_first()
        _no_rows(movies, path)
        return users, movies

    def _ratings(self, path: Path, bad: BadRows, part: RawPart, limits: ReadLimits):
        return split_delimited(path, self.encoding, "::", 4, bad, start=part.start, end=part.end, limits=limits)


class MovieLens100KReader(_MovieLensReader):
    """The GroupLens layout (u.data, u.user, u.item) or RecBole's atomic files, whichever is there."""

    spec = _spec("ml-100k")
    encoding = "latin-1"

    def _layout(self, raw_dir: Path) -> str:
        return "recbole" if (Path(raw_dir) / "ml-100k.inter").is_file() else "grouplens"

    def parts(self, raw_dir: Path, target_bytes: int) -> list[RawPart]:
        layout = self._layout(raw_dir)
        names = ("ml-100k.inter", "ml-100k.user", "ml-100k.item") if layout == "recbole" \
            else ("u.data", "u.user", "u.item")
        for name in names[1:]:
            require_file(raw_dir, name)
        return [RawPart(0, str(require_file(raw_dir, names[0])), extra={"layout": layout})]

    def context(self, raw_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
        read = self._recbole_side if self._layout(raw_dir) == "recbole" else self._grouplens_side
        return read(Path(raw_dir), limits)

    def _recbole_side(self, raw_dir: Path, limits: ReadLimits) -> tuple[dict, dict]:
        bad = BadRows()
        users, movies = {}, {}
        path = require_file(raw_dir, "ml-100k.user")
        for lineno, rec in named_rows(path, "utf-8", "\t", RECBOLE_USER, bad, limits, _recbole_name):
            self._add_user(users, rec, path, lineno, bad)
        bad.raise_first()
        _no_rows(users, path)
        path = require_file(raw_dir, "ml-100k.item")
        for _, (mid, title, year, genres) in named_rows(path, "utf-8", "\t", RECBOLE_ITEM, bad,
                                                        limits, _recbole_name):
            movies[mid] = (f"{title} ({year})" if year else title, ", ".join(genres.split()))
        bad.raise_first()
        _no_rows(movies, path)
        return users, movies

    def _grouplens_side(self, raw_dir: Path, limits: ReadLimits) -> tuple[dict, dict]:
        bad = BadRows()
        users, movies = {}, {}
        path = require_file(raw_dir, "u.user")
        for lineno, rec in split_delimited(path, self.encoding, "|", 5, bad, limits=limits):
            self._add_user(users, rec, path, lineno, bad)
        bad.raise_first()
        _no_rows(users, path)
        path = require_file(raw_dir, "u.item")
        for lineno, rec in split_delimited(path, self.encoding, "|", 24, bad, limits=limits):
            flags = rec[5:]
            if any(x not in ("0", "1") for x in flags):
                bad.add(str(path), lineno, "genre flags must be 0 or 1", "|".join(rec))
                continue
            genres = [g for g, x in zip(ML100K_GENRES, flags) if x == "1"]
            movies[rec[0]] = (rec[1], ", ".join(genres))
        bad.raise_first()
        _no_rows(movies, path)
        return users, movies

    @staticmethod
    def _add_user(users: dict, rec: list[str], path: Path, lineno: int, bad: BadRows) -> None:
        """user_id, age, gender, occupation, zip code; an age that is not whole years is a bad record."""
        uid, age, gender, occ, zipcode = rec
        if not (age.isascii() and age.isdigit()):
            bad.add(str(path), lineno, f"age is not a number: {age!r}", "|".join(rec))
            return
        users[uid] = (GENDER_TEXT.get(gender, gender), age, occ, zipcode)

    def _ratings(self, path: Path, bad: BadRows, part: RawPart, limits: ReadLimits):
        if part.extra.get("layout") == "recbole":
            for lineno, (uid, mid, rating, ts) in named_rows(path, "utf-8", "\t", RECBOLE_INTER, bad,
                                                             limits, _recbole_name):
                # RecBole stores rating and timestamp as floats ("3", "881250949" or "3.0").
                yield lineno, [uid, mid, _float_int(rating), _float_int(ts)]
        else:
            yield from split_delimited(path, self.encoding, "\t", 4, bad, start=part.start, end=part.end,
                                       limits=limits)

    sep = "\t"


def _float_int(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() else v

"""Readers of MovieLens-1M, MovieLens-100K (both layouts) and BookCrossing, on files in the exact
distributed formats: real ML-100K rewritten as GroupLens u.* files, small hand-made ML-1M and
BookCrossing files with the quirks of the real ones (latin-1, '::', escaped quotes, NULL ages)."""
from __future__ import annotations

from pathlib import Path

import pytest

from flip_dist.data.readers import get_reader
from flip_dist.data.readers.movielens import ML100K_GENRES
from flip_dist.errors import FlipDataError


def _read(name: str, raw: Path, seed: int = 42):
    reader = get_reader(name)
    part = reader.parts(raw, 1 << 30)[0]
    return reader.read_part(part, reader.context(raw), seed)


def _write_grouplens(recbole: Path, out: Path) -> None:
    """Real ML-100K rewritten in the GroupLens u.* format (tab / '|' separated, latin-1)."""
    out.mkdir()
    inter = (recbole / "ml-100k.inter").read_text().splitlines()[1:]
    (out / "u.data").write_text("".join(line + "\n" for line in inter))
    users = [line.split("\t") for line in (recbole / "ml-100k.user").read_text().splitlines()[1:]]
    (out / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in users))
    lines = []
    for mid, title, year, genres in (line.split("\t")
                                     for line in (recbole / "ml-100k.item").read_text().splitlines()[1:]):
        flags = ["1" if g in genres.split() else "0" for g in ML100K_GENRES]
        full = f"{title} ({year})" if year else title
        lines.append("|".join([mid, full, f"01-Jan-{year or 1995}", "", "http://x"] + flags) + "\n")
    (out / "u.item").write_bytes("".join(lines).encode("latin-1"))


def test_ml100k_grouplens_and_recbole_layouts_agree(ml100k_raw, tmp_path):
    _write_grouplens(ml100k_raw, tmp_path / "gl")
    a = _read("ml-100k", ml100k_raw).table
    b = _read("ml-100k", tmp_path / "gl").table
    assert a.num_rows == b.num_rows == 72_855
    assert a.equals(b)


ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n"
ML1M_MOVIES = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama|Musical\n"
ML1M_RATINGS = "1::1::5::978300760\n1::2::3::978302109\n2::2::1::978301968\n2::1::4::978300275\n"


def _ml1m(tmp_path: Path, ratings: str = ML1M_RATINGS) -> Path:
    raw = tmp_path / "ml-1m"
    raw.mkdir()
    (raw / "users.dat").write_bytes(ML1M_USERS.encode("latin-1"))
    (raw / "movies.dat").write_bytes(ML1M_MOVIES.encode("latin-1"))
    (raw / "ratings.dat").write_bytes(ratings.encode("latin-1"))
    return raw


def test_ml1m_format_codes_labels_and_drop(tmp_path):
    res = _read("ml-1m", _ml1m(tmp_path))
    rows = res.table.to_pylist()
    assert res.stats == {"dropped_rating_3": 1}
    assert [r["label"] for r in rows] == [1, 0, 1]
    assert [r["order"] for r in rows] == [978300760, 978301968, 978300275]
    first = rows[0]
    assert (first["gender"], first["age"], first["occupation"]) == ("female", "under 18", "K-12 student")
    assert first["genre"] == "Animation, Children's, Comedy"
    assert rows[1]["title"] == "Misérables, Les (1995)" and rows[1]["age"] == "56+"
    assert rows[1]["occupation"] == "self-employed"


def test_ml1m_bad_rows_are_counted_with_line_numbers(tmp_path):
    ratings = ML1M_RATINGS + "1::1::five::978300760\n1::1::5\n9::1::4::978300760\n1::1::7::978300760\n"
    res = _read("ml-1m", _ml1m(tmp_path, ratings))
    assert res.table.num_rows == 3
    assert res.bad.total == 4
    lines = [(s["line"], s["reason"]) for s in res.bad.samples]
    assert lines[0] == (5, "rating is not an integer: 'five'")
    assert lines[1][0] == 6 and "expected 4 columns" in lines[1][1]
    assert lines[2] == (7, "unknown user id")
    assert lines[3] == (8, "rating 7 outside 1..5")


def test_missing_and_empty_files_name_the_file(tmp_path):
    raw = _ml1m(tmp_path)
    (raw / "users.dat").unlink()
    with pytest.raises(FlipDataError, match="users.dat"):
        get_reader("ml-1m").parts(raw, 1 << 20)
    (raw / "users.dat").write_text("")
    with pytest.raises(FlipDataError, match=r"users\.dat: file is empty"):
        get_reader("ml-1m").parts(raw, 1 << 20)


def test_bad_side_file_record_names_file_and_line(tmp_path):
    raw = _ml1m(tmp_path)
    (raw / "users.dat").write_text(ML1M_USERS + "3::X::1::10::48067\n")
    with pytest.raises(FlipDataError, match=r"users\.dat: line 3"):
        get_reader("ml-1m").context(raw)


def test_unknown_dataset_names_the_key():
    with pytest.raises(FlipDataError, match="'movielens-42'"):
        get_reader("movielens-42")


BX_RATINGS = ('"User-ID";"ISBN";"Book-Rating"\n"2";"0195153448";"0"\n"8";"0002005018";"5"\n"8";"0060973129";"9"\n'
              '"2";"UNKNOWN";"7"\n"8";"0195153448";"x"\n')
BX_BOOKS = ('"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";'
            '"Image-URL-L"\n'
            '"0195153448";"Classical Mythology";"Mark P. O. Morford";"2002";"Oxford University Press";"s";"m";"l"\n'
            '"0002005018";"The Word \\"Desire\\"";"Rikki Ducornet";"1997";"Henry Holt &amp; Company";"s";"m";"l"\n'
            '"0060973129";"Decision in Normandy";"Carlo D\'Este";"1991";"HarperPerennial";"s";"m";"l"\n'
            '"0374157065";"broken row";"too";"few"\n')
BX_USERS = '"User-ID";"Location";"Age"\n"2";"stockton, california, usa";"18"\n"8";"timmins, ontario, canada";NULL\n'


def _bx(tmp_path: Path) -> Path:
    raw = tmp_path / "bx"
    raw.mkdir()
    for name, text in (("BX-Book-Ratings.csv", BX_RATINGS), ("BX-Books.csv", BX_BOOKS), ("BX-Users.csv", BX_USERS)):
        (raw / name).write_bytes(text.encode("latin-1"))
    return raw


def test_bookcrossing_format_labels_join_and_bad_rows(tmp_path):
    res = _read("bookcrossing", _bx(tmp_path))
    rows = res.table.to_pylist()
    assert [r["label"] for r in rows] == [0, 0, 1]  # rating > 5; implicit 0 is a negative
    assert rows[1]["title"] == 'The Word "Desire"' and rows[1]["publisher"] == "Henry Holt & Company"
    assert rows[1]["age"] == "unknown" and rows[0]["age"] == "18"
    assert rows[2]["author"] == "Carlo D'Este"
    assert res.stats["dropped_unknown_isbn"] == 1
    reasons = sorted(s["reason"] for s in res.bad.samples)
    assert reasons == ["expected 8 columns, found 4", "rating is not an integer: 'x'"]
    assert {s["line"] for s in res.bad.samples} == {5, 6}


def test_bookcrossing_split_key_is_seeded(tmp_path):
    raw = _bx(tmp_path)
    a, b, c = (_read("bookcrossing", raw, seed).table["order"].to_pylist() for seed in (1, 1, 2))
    assert a == b and a != c


def test_bookcrossing_missing_column_names_the_key(tmp_path):
    raw = _bx(tmp_path)
    (raw / "BX-Users.csv").write_text('"User-ID";"Place";"Age"\n"2";"x";"1"\n')
    with pytest.raises(FlipDataError, match="key 'Location'"):
        get_reader("bookcrossing").context(raw)

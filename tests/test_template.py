"""Prompt rendering, piecewise tokenization and field spans, exact after truncation, for
WordPiece (MiniLM) and byte-level BPE (RoBERTa)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flip_dist.data.template import PromptTokenizer, ragged_arange, render

TRICKY = pa.table({
    "title": ["Misérables, Les (1995)", "St.", "Children's, Comedy", "3.5 out of 5!", "東京物語 (1953)",
              "  spaced   out ", "a" * 300, "The Word \"Desire\""],
    "genre": ["Drama", "ünïcode", "x", "Sci-Fi/Fantasy", "emoji 🙂 ok", "?", "b", "c"],
})


def _rows(enc):
    return [list(x) for x in enc.input_ids.to_pylist()]


def test_render_builds_the_template():
    t = pa.table({"a": ["Toy Story (1995)", "x"], "b": ["ünïcode", "female"]})
    assert render(t, ["a", "b"], ["title", "gender"]) == [
        "title is Toy Story (1995). gender is ünïcode.", "title is x. gender is female."]


def test_ragged_arange():
    assert ragged_arange(np.array([2, 0, 3])).tolist() == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("source", ["ml100k", "tricky"])
def test_minilm_piecewise_equals_whole_sentence_tokenization(source, ml100k_staging, minilm):
    if source == "ml100k":
        reader, res = ml100k_staging
        table, fields, texts = res.table.slice(0, 2000), reader.spec.fields, reader.spec.field_texts
    else:
        table, fields, texts = TRICKY, ["title", "genre"], ["title", "genre"]
    enc = PromptTokenizer(minilm, texts, 512)(table, fields)
    want = minilm(render(table, fields, texts), truncation=True, max_length=512)["input_ids"]
    assert _rows(enc) == want
    rows = table.to_pylist()
    for r, ids in enumerate(_rows(enc)):
        for k, f in enumerate(fields):
            s, e = enc.spans[r, k]
            assert ids[s:e] == minilm(rows[r][f], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("max_length", [48, 24, 12, 3])
def test_truncation_gives_exact_or_empty_spans(ml100k_staging, minilm, max_length):
    reader, res = ml100k_staging
    table = res.table.slice(0, 500)
    full = PromptTokenizer(minilm, reader.spec.field_texts, 512)(table, reader.spec.fields)
    enc = PromptTokenizer(minilm, reader.spec.field_texts, max_length)(table, reader.spec.fields)
    want = minilm(render(table, reader.spec.fields, reader.spec.field_texts), truncation=True,
                  max_length=max_length)["input_ids"]
    assert _rows(enc) == want, "same ids as the tokenizer's own truncation"
    n_empty = 0
    for r, (ids, ids_full) in enumerate(zip(_rows(enc), _rows(full))):
        assert len(ids) <= max_length and ids[-1] == minilm.sep_token_id
        for k in range(len(reader.spec.fields)):
            s, e = enc.spans[r, k]
            fs, fe = full.spans[r, k]
            if s == e:
                n_empty += 1
                assert fe > len(ids) - 1, "empty only when the value did not fit"
            else:
                assert (s, e) == (fs, fe) and ids[s:e] == ids_full[fs:fe]
    assert n_empty > 0
    np.testing.assert_array_equal(enc.num_truncated, (enc.spans[..., 0] == enc.spans[..., 1]).sum(1))


def test_roberta_bpe_spans_are_exactly_the_values(ml100k_staging, roberta_bpe):
    reader, res = ml100k_staging
    tables = [(res.table.slice(0, 1000), reader.spec.fields, reader.spec.field_texts),
              (TRICKY, ["title", "genre"], ["title", "genre"])]
    for table, fields, texts in tables:
        enc = PromptTokenizer(roberta_bpe, texts, 512)(table, fields)
        sentences = render(table, fields, texts)
        for r, (ids, row) in enumerate(zip(_rows(enc), table.to_pylist())):
            assert ids[0] == roberta_bpe.bos_token_id == 0 and ids[-1] == roberta_bpe.eos_token_id == 2
            assert roberta_bpe.decode(ids[1:-1]) == sentences[r], "byte-level BPE is lossless"
            for k, f in enumerate(fields):
                s, e = enc.spans[r, k]
                assert roberta_bpe.decode(ids[s:e]) == " " + row[f]


def test_partly_truncated_value_gets_an_empty_span(minilm):
    t = pa.table({"a": ["one"], "b": ["alpha beta gamma delta epsilon"]})
    # [CLS] a is one . b is alpha beta gamma | cut | ... -> b's value is only partly there.
    enc = PromptTokenizer(minilm, ["a", "b"], 9)(t, ["a", "b"])
    assert enc.spans[0, 0].tolist() == [3, 4]
    assert enc.spans[0, 1].tolist() == [0, 0]
    assert enc.num_truncated.tolist() == [1]


def test_vocabulary_token_table_gives_the_same_prompts(ml100k_staging, minilm):
    """The fast path (tokens of known values from a per-dataset table) equals tokenizing values."""
    from flip_dist.data.template import TokenTable
    from flip_dist.data.vocab import Vocabulary, oov_id

    reader, res = ml100k_staging
    fields = reader.spec.fields
    train, test = res.table.slice(0, 5_000), res.table.slice(60_000, 3000)
    vocab = Vocabulary.build(train, fields, min_count=1)
    prompts = PromptTokenizer(minilm, reader.spec.field_texts, 128)
    values = vocab.table.sort_by("feature_id")["value"].to_pylist()
    known = TokenTable.concat([prompts.tokenize_values(values[:2000]), prompts.tokenize_values(values[2000:])])
    oov = [oov_id(f) for f in range(len(fields))]
    for table in (train.slice(0, 3000), test):   # test has values unseen in train (OOV ids)
        fids = vocab.encode(table)
        fast = PromptTokenizer(minilm, reader.spec.field_texts, 128)(table, fields, fids, known, oov)
        slow = PromptTokenizer(minilm, reader.spec.field_texts, 128)(table, fields)
        assert fast.input_ids.equals(slow.input_ids)
        np.testing.assert_array_equal(fast.spans, slow.spans)
    assert (vocab.encode(test) == np.array(oov)).any(0).sum() >= 3   # several fields with OOVs

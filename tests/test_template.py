"""Prompt rendering and field spans, exact after truncation, for WordPiece and byte-level BPE."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flip_dist.data.template import PromptTokenizer, render, token_spans


def _encode(tokenizer, table, fields, texts, max_length):
    rendered, char_spans = render(table, fields, texts)
    ids, attn, valid, offsets = PromptTokenizer(tokenizer, max_length)(rendered)
    return rendered, char_spans, ids, attn, token_spans(offsets, valid, char_spans)


def test_render_builds_the_template_and_char_spans():
    t = pa.table({"a": ["Toy Story (1995)", "x"], "b": ["ünïcode", "female"]})
    texts, spans = render(t, ["a", "b"], ["title", "gender"])
    assert texts == ["title is Toy Story (1995). gender is ünïcode.", "title is x. gender is female."]
    for text, row, values in zip(texts, spans, [["Toy Story (1995)", "ünïcode"], ["x", "female"]]):
        assert [text[s:e] for s, e in row] == values


@pytest.mark.parametrize("max_length", [512, 48, 24, 12])
def test_minilm_spans_on_real_rows_exact_or_empty(ml100k_staging, minilm, max_length):
    reader, res = ml100k_staging
    table = res.table.slice(0, 400)
    _, char_spans, ids, attn, spans = _encode(minilm, table, reader.spec.fields, reader.spec.field_texts, max_length)
    assert ids.shape[1] <= max_length
    rows = table.to_pylist()
    n_empty = 0
    for r in range(len(rows)):
        full = minilm(
            " ".join(f"{t} is {rows[r][f]}." for f, t in zip(reader.spec.fields, reader.spec.field_texts)),
            add_special_tokens=False)["input_ids"]
        kept = int(attn[r].sum()) - 2  # minus [CLS] and [SEP]
        for k, f in enumerate(reader.spec.fields):
            s, e = spans[r, k]
            want = minilm(rows[r][f], add_special_tokens=False)["input_ids"]
            if s == e:
                n_empty += 1
                # Empty only when truncation cut the value: its tokens do not all fit.
                assert kept < len(full)
                continue
            assert list(ids[r, s:e]) == want, (f, rows[r][f])
    if max_length == 512:
        assert n_empty == 0
    if max_length == 12:
        assert n_empty > 0


def test_roberta_bpe_spans_cover_the_value(ml100k_staging, roberta_bpe):
    reader, res = ml100k_staging
    table = res.table.slice(0, 300)
    _, _, ids, attn, spans = _encode(roberta_bpe, table, reader.spec.fields, reader.spec.field_texts, 256)
    assert ids[0, 0] == roberta_bpe.bos_token_id == 0
    assert roberta_bpe.pad_token_id == 1 and ids[~attn].tolist() == [1] * int((~attn).sum())
    for r, row in enumerate(table.to_pylist()):
        for k, f in enumerate(reader.spec.fields):
            s, e = spans[r, k]
            decoded = roberta_bpe.decode(ids[r, s:e].tolist()).strip()
            # Byte-level BPE may fuse the template's closing "." onto a value ending in ")".
            assert decoded in (row[f], row[f] + "."), (f, row[f], decoded)


def test_partly_truncated_value_gets_an_empty_span(minilm):
    t = pa.table({"a": ["one"], "b": ["alpha beta gamma delta epsilon"]})
    # "[CLS] a is one . b is alpha beta gamma ..." : cut inside b's value.
    _, _, ids, _, spans = _encode(minilm, t, ["a", "b"], ["a", "b"], 9)
    assert spans[0, 0].tolist() == [3, 4]
    assert spans[0, 1, 0] == spans[0, 1, 1]


def test_token_spans_ignore_special_and_padding_tokens():
    offsets = np.array([[[0, 0], [0, 3], [4, 6], [0, 0], [0, 0]]])
    valid = np.array([[False, True, True, False, False]])
    spans = token_spans(offsets, valid, np.array([[[0, 3], [4, 6]]]))
    assert spans.tolist() == [[[1, 2], [2, 3]]]

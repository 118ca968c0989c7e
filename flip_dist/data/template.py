"""Modality transformation (paper Eq. 2): x_text = [m_f is v_f.] over fields, and the token span
of every value, computed from the tokenizer's character offsets so that it stays exact after
truncation: a value that truncation cut (even partly) gets an empty span, never a wrong one."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def render(table: pa.Table, fields: Sequence[str], field_texts: Sequence[str]
           ) -> tuple[list[str], np.ndarray]:
    """Texts "<field> is <value>. <field> is <value>. ..." and each value's [start, end) in
    characters, shape (rows, F, 2). Built column-wise with Arrow kernels, not a per-row loop."""
    pieces: list[pa.Array | str] = []
    char_spans = np.empty((table.num_rows, len(fields), 2), dtype=np.int64)
    pos = np.zeros(table.num_rows, dtype=np.int64)
    for i, (f, t) in enumerate(zip(fields, field_texts)):
        prefix = f"{t} is " if i == 0 else f" {t} is "
        value = table[f].combine_chunks() if isinstance(table[f], pa.ChunkedArray) else table[f]
        pos += len(prefix)
        length = pc.utf8_length(value).to_numpy(zero_copy_only=False).astype(np.int64)
        char_spans[:, i, 0] = pos
        char_spans[:, i, 1] = pos + length
        pos += length + 1  # the closing "."
        pieces += [prefix, value, "."]
    texts = pc.binary_join_element_wise(*pieces, "")
    return texts.to_pylist(), char_spans


def token_spans(offsets: np.ndarray, valid: np.ndarray, char_spans: np.ndarray) -> np.ndarray:
    """Map character spans to token spans, shape (rows, F, 2).

    offsets: (rows, L, 2) character offsets per token; valid: (rows, L) True for real (non-special,
    non-padding) tokens. A token belongs to a value when their character ranges overlap. A value is
    kept only if truncation kept all of its characters; otherwise its span is empty (0, 0).
    """
    tok_s, tok_e = offsets[..., 0][:, None, :], offsets[..., 1][:, None, :]   # (B, 1, L)
    cs, ce = char_spans[..., 0][..., None], char_spans[..., 1][..., None]      # (B, F, 1)
    inside = valid[:, None, :] & (tok_s < ce) & (tok_e > cs)                   # (B, F, L)
    any_tok = inside.any(-1)
    L = offsets.shape[1]
    start = np.where(any_tok, inside.argmax(-1), 0)
    end = np.where(any_tok, L - inside[..., ::-1].argmax(-1), 0)
    kept_chars = np.where(valid, offsets[..., 1], 0).max(-1)                   # (B,)
    whole = any_tok & (kept_chars[:, None] >= char_spans[..., 1])
    return np.stack([np.where(whole, start, 0), np.where(whole, end, 0)], -1)


class PromptTokenizer:
    """Batch tokenization straight on the Rust tokenizer (a private copy configured for truncation
    and pad-to-longest): half the cost of the transformers wrapper's per-row conversions, and
    picklable, so Ray workers never import transformers."""

    def __init__(self, hf_tokenizer, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=hf_tokenizer.pad_token_id, pad_token=hf_tokenizer.pad_token)
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, attention, valid, offsets): (B, L) int32, bool, bool and (B, L, 2) int64, where
        valid marks real tokens (not special, not padding)."""
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = np.array([e.ids for e in encs], dtype=np.int32)
        attn = np.array([e.attention_mask for e in encs], dtype=bool)
        special = np.array([e.special_tokens_mask for e in encs], dtype=bool)
        offsets = np.array([e.offsets for e in encs], dtype=np.int64).reshape(len(encs), -1, 2)
        return ids, attn, attn & ~special, offsets

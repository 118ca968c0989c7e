"""Modality transformation (paper Eq. 3): x_text = [m_f is v_f.] over the fields, tokenized, with
the token span of every value.

The prompt is tokenized piece by piece: [CLS] + for each field (tokens of "<m_f> is", tokens of
" <v_f>", tokens of ".") + [SEP]. For WordPiece (BERT, MiniLM, TinyBERT) this is exactly the
tokenization of the whole sentence, since its pre-tokenizer splits at spaces and punctuation.
For byte-level BPE (RoBERTa) it differs only where a value ending in punctuation would fuse
with the closing "." (")." becomes ")" "."), which keeps every value's tokens its own. Either
way the spans are exact by construction, and a batch tokenizes each distinct value once rather
than every row's whole sentence. A value that truncation cut, even partly, gets an empty span.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flip_dist.errors import FlipConfigError


def render(table: pa.Table, fields: Sequence[str], field_texts: Sequence[str]) -> list[str]:
    """The prompt sentences as text (for reading and for tests; encoding does not need them)."""
    pieces: list[pa.Array | str] = []
    for i, (f, t) in enumerate(zip(fields, field_texts)):
        pieces += [("" if i == 0 else " ") + f"{t} is ", table[f].combine_chunks(), "."]
    return pc.binary_join_element_wise(*pieces, "").to_pylist()


def ragged_arange(lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [0..l0), [0..l1), ... without a Python loop."""
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)


@dataclass
class TokenTable:
    """Tokens of " <value>" for every feature id of a vocabulary, tokenized once per dataset:
    encoding a row of known values is then a gather, no tokenizer call. Arrays are plain numpy,
    shared zero-copy by the workers through Ray's object store."""

    lengths: np.ndarray   # (M,) int64
    starts: np.ndarray    # (M,) int64 offsets into flat
    flat: np.ndarray      # int32

    @classmethod
    def concat(cls, pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> TokenTable:
        lengths = np.concatenate([p[0] for p in pieces]).astype(np.int64)
        return cls(lengths, np.cumsum(lengths) - lengths, np.concatenate([p[1] for p in pieces]))


@dataclass
class EncodedPrompts:
    input_ids: pa.ListArray      # per row, special tokens included, no padding
    spans: np.ndarray            # (B, F, 2) int32 [start, end) of each value; (0, 0) if truncated

    @property
    def num_truncated(self) -> np.ndarray:
        return (self.spans[..., 0] == self.spans[..., 1]).sum(1)


class PromptTokenizer:
    """Picklable (Ray workers never import transformers); holds a private copy of the Rust
    tokenizer and the token ids of the constant template pieces."""

    def __init__(self, hf_tokenizer, field_texts: Sequence[str], max_length: int,
                 cache_size: int = 200_000) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = max_length
        # Value -> token ids, per field: Zipf-distributed values repeat across batches, and a dict
        # hit costs ~0.1 us against ~10 us to tokenize. Cleared when full (bounded memory).
        self.cache_size = cache_size
        self.cache: list[dict[str, list[int]]] = [{} for _ in field_texts]
        specials = self.tokenizer.encode("", add_special_tokens=True).ids
        if len(specials) not in (0, 2):
            raise FlipConfigError(f"tokenizer wraps a sentence in {specials}: expected [CLS] x [SEP] or nothing")
        self.bos, self.eos = (specials[:1], specials[1:]) if specials else ([], [])
        self.prefixes = [self._ids(("" if i == 0 else " ") + f"{t} is") for i, t in enumerate(field_texts)]
        self.suffix = self._ids(".")
        if max_length < len(self.bos) + len(self.eos) + 1:
            raise FlipConfigError(f"max_length {max_length} leaves no room for tokens")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __getstate__(self) -> dict:
        return {**self.__dict__, "cache": [{} for _ in self.cache]}  # ship without the cache

    def tokenize_values(self, values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(lengths, flat ids) of " <value>" for each value: a piece of a TokenTable."""
        toks = [e.ids for e in self.tokenizer.encode_batch_fast([" " + v for v in values], add_special_tokens=False)]
        lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
        return lengths, np.fromiter((i for t in toks for i in t), dtype=np.int32, count=int(lengths.sum()))

    def _value_tokens(self, column: pa.ChunkedArray | pa.Array, field: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenize each distinct value once: (per-row index into uniques, unique lengths, flat ids)."""
        enc = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
        uniques = enc.dictionary.to_pylist()
        cache = self.cache[field]
        toks = [cache.get(u) for u in uniques]
        missing = [i for i, t in enumerate(toks) if t is None]
        if missing:
            new = self.tokenizer.encode_batch_fast([" " + uniques[i] for i in missing], add_special_tokens=False)
            if len(cache) + len(missing) > self.cache_size:
                cache.clear()
            for i, e in zip(missing, new):
                toks[i] = cache[uniques[i]] = e.ids
        lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
        flat = np.fromiter((i for t in toks for i in t), dtype=np.int32, count=int(lengths.sum()))
        return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), lengths, flat

    def __call__(self, table: pa.Table, fields: Sequence[str], feature_ids: np.ndarray | None = None,
                 known: TokenTable | None = None, oov_ids: Sequence[int] = ()) -> EncodedPrompts:
        """With `known` and the rows' feature ids, a field whose values are all in the vocabulary
        takes their tokens from the table; a field with out-of-vocabulary values in the batch
        tokenizes its distinct values (the text shows the real value even when its id is OOV)."""
        values = []
        for f, name in enumerate(fields):
            if known is None or feature_ids is None:
                values.append(self._value_tokens(table[name], f))
                continue
            ids = feature_ids[:, f].astype(np.int64)
            oov = ids == oov_ids[f]
            if not oov.any():
                values.append((ids, known.lengths, known.flat, known.starts))
            else:
                values.append(self._mixed_tokens(table[name], ids, oov, f, known))
        return self.assemble(values)

    def _mixed_tokens(self, column: pa.ChunkedArray | pa.Array, ids: np.ndarray, oov: np.ndarray,
                      field: int, known: TokenTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A field with some OOV rows: the known rows' tokens are gathered from the table and only
        the OOV rows' values go through the tokenizer (every worker would otherwise re-tokenize,
        and cache, the field's whole value distribution)."""
        o_index, o_len, o_flat = self._value_tokens(column.filter(pa.array(oov)), field)
        k_ids, k_index = np.unique(ids[~oov], return_inverse=True)
        k_len = known.lengths[k_ids]
        k_flat = known.flat[np.repeat(known.starts[k_ids], k_len) + ragged_arange(k_len)]
        index = np.empty(len(ids), dtype=np.int64)
        index[~oov] = k_index
        index[oov] = o_index + len(k_ids)
        return index, np.concatenate([k_len, o_len]), np.concatenate([k_flat, o_flat])

    def assemble(self, values: Sequence[tuple]) -> EncodedPrompts:
        """Rows from per-field value tokens: for each field, (per-row index into that field's
        token lists, each list's length, the lists concatenated[, each list's start]).
        Vectorised over rows."""
        B, F = len(values[0][0]), len(values)
        # Segment lengths per row: bos, then (prefix_f, value_f, suffix) per field.
        seg_len = np.empty((B, 1 + 3 * F), dtype=np.int64)
        seg_len[:, 0] = len(self.bos)
        for f, (idx, ulen, *_) in enumerate(values):
            seg_len[:, 1 + 3 * f] = len(self.prefixes[f])
            seg_len[:, 2 + 3 * f] = ulen[idx]
            seg_len[:, 3 + 3 * f] = len(self.suffix)
        seg_start = np.cumsum(seg_len, axis=1) - seg_len          # within the untruncated row
        full = seg_len.sum(1)                                     # without eos
        kept = np.minimum(full, self.max_length - len(self.eos))  # body tokens that survive
        row_len = kept + len(self.eos)
        out_off = np.concatenate([[0], np.cumsum(row_len)])
        # Write every segment into a flat untruncated buffer, then keep each row's first `kept`.
        buf_off = np.concatenate([[0], np.cumsum(full)])
        buf = np.empty(int(buf_off[-1]), dtype=np.int32)

        def put_const(col: int, tokens: list[int]) -> None:
            if tokens:
                pos = buf_off[:-1, None] + seg_start[:, col, None] + np.arange(len(tokens))
                buf[pos] = tokens

        put_const(0, self.bos)
        for f, (idx, ulen, flat, *ustart) in enumerate(values):
            put_const(1 + 3 * f, self.prefixes[f])
            lens = ulen[idx]
            ar = ragged_arange(lens)
            starts = ustart[0] if ustart else np.cumsum(ulen) - ulen
            src = np.repeat(starts[idx], lens) + ar
            dst = np.repeat(buf_off[:-1] + seg_start[:, 2 + 3 * f], lens) + ar
            buf[dst] = flat[src]
            put_const(3 + 3 * f, self.suffix)
        keep = ragged_arange(full) < np.repeat(kept, full)
        ids = np.empty(int(out_off[-1]), dtype=np.int32)
        ids[np.repeat(out_off[:-1], kept) + ragged_arange(kept)] = buf[keep]
        if self.eos:
            ids[out_off[1:] - 1] = self.eos[0]
        starts = seg_start[:, 2::3]                               # value segments
        ends = starts + seg_len[:, 2::3]
        whole = ends <= kept[:, None]
        spans = np.stack([np.where(whole, starts, 0), np.where(whole, ends, 0)], -1).astype(np.int32)
        return EncodedPrompts(pa.ListArray.from_arrays(pa.array(out_off.astype(np.int32)), pa.array(ids)), spans)

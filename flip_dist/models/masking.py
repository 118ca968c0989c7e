"""Field-level data masking (paper IV-C1) and the token-level ablation (Table VII).

Text: r_text of the fields (at least one) have every token of their value replaced by [MASK];
the field spans from preprocessing say where each value is. Tabular: r_tab of the fields (at
least one) get the shared <MASK> feature id. The two choices are independent (paper IV-C1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label of positions that are not predicted


@dataclass(frozen=True)
class RowShard:
    """This rank's rows [rank*B, (rank+1)*B) of a global batch of world*B rows. Random draws are
    made for the whole global batch, from a generator every rank seeds alike, and sliced: N ranks
    then mask exactly what one process masks on the concatenated batch (the equivalence test)."""

    rank: int = 0
    world: int = 1

    def rows(self, draw: torch.Tensor, local_rows: int) -> torch.Tensor:
        return draw[self.rank * local_rows:(self.rank + 1) * local_rows]


LOCAL = RowShard()


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
             shard: RowShard) -> torch.Tensor:
    full = torch.rand((shard.world * shape[0], *shape[1:]), generator=generator, device=device)
    return shard.rows(full, shape[0])


@dataclass
class TextMask:
    input_ids: torch.Tensor   # (B, L) with masked positions replaced
    labels: torch.Tensor      # (B, L) original ids at masked positions, IGNORE elsewhere


def _choose(valid: torch.Tensor, ratio: float, generator: torch.Generator | None,
            shard: RowShard = LOCAL) -> torch.Tensor:
    """Per row, pick max(1, round(ratio * n_valid)) of the valid positions uniformly at random."""
    scores = _uniform(tuple(valid.shape), generator, valid.device, shard)
    scores = scores.masked_fill(~valid, 2.0)                         # invalid sort last
    rank = scores.argsort(dim=1).argsort(dim=1)
    n_valid = valid.sum(1, keepdim=True)
    k = torch.clamp(torch.round(ratio * n_valid.float()).long(), min=1)
    return (rank < torch.minimum(k, n_valid)) & valid


def mask_text_fields(input_ids: torch.Tensor, field_spans: torch.Tensor, ratio: float,
                     mask_token_id: int, generator: torch.Generator | None = None,
                     shard: RowShard = LOCAL) -> TextMask:
    """Mask whole value spans of r_text of the fields (fields cut by truncation are not chosen)."""
    starts, ends = field_spans[..., 0], field_spans[..., 1]          # (B, F)
    chosen = _choose(ends > starts, ratio, generator, shard)          # (B, F)
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None, None, :]
    in_span = (pos >= starts[..., None]) & (pos < ends[..., None]) & chosen[..., None]
    masked = in_span.any(1)                                           # (B, L)
    return TextMask(input_ids.masked_fill(masked, mask_token_id),
                    input_ids.masked_fill(~masked, IGNORE))


def mask_text_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor,
                     ratio: float, mask_token_id: int, vocab_size: int,
                     generator: torch.Generator | None = None, shard: RowShard = LOCAL) -> TextMask:
    """The ablation 'w/o field-level masking': BERT's random token masking (r_text of the real
    tokens; of those 80% -> [MASK], 10% -> a random token, 10% unchanged). Across ranks the draws
    are sliced from a global batch padded to this rank's length, so not those of one process."""
    valid = attention_mask.bool() & ~special
    chosen = _choose(valid, ratio, generator, shard)
    roll = _uniform(tuple(input_ids.shape), generator, input_ids.device, shard)
    random_ids = shard.rows(torch.randint(0, vocab_size, (shard.world * input_ids.shape[0], input_ids.shape[1]),
                                          generator=generator, device=input_ids.device), input_ids.shape[0])
    out = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, out)
    return TextMask(out, input_ids.masked_fill(~chosen, IGNORE))


def mask_tab_fields(feature_ids: torch.Tensor, ratio: float, mask_id: int,
                    generator: torch.Generator | None = None,
                    shard: RowShard = LOCAL) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked feature ids, (B, F) bool of the masked fields), r_tab of the fields, at least one:
    the same number in every row, which lets ranks slice a global draw of NCE noise too."""
    chosen = _choose(torch.ones_like(feature_ids, dtype=torch.bool), ratio, generator, shard)
    return feature_ids.masked_fill(chosen, mask_id), chosen

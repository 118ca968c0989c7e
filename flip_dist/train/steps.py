"""One FLIP pretraining / finetuning step as plain functions of (sparse, dense, batch): the single
process loop calls them directly; the distributed runtime passes a sharded `sparse` and a
DeepSpeed engine as `dense`. Masking happens here, where the random generator lives."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flip_dist.data.batches import Batch
from flip_dist.data.vocab import MASK_ID
from flip_dist.models.flip import FlipSparse
from flip_dist.models.masking import LOCAL, RowShard, mask_tab_fields, mask_text_fields, mask_text_tokens
from flip_dist.models.objectives import Objectives
from flip_dist.models.sampling import AliasSampler


@dataclass(frozen=True)
class TextIds:
    mask_token_id: int
    vocab_size: int


def special_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[CLS]/<s> at 0 and [SEP]/</s> at each row's last real token (padding is not valid anyway)."""
    special = torch.zeros_like(attention_mask, dtype=torch.bool)
    special[:, 0] = True
    last = attention_mask.sum(1) - 1
    special[torch.arange(len(last), device=last.device), last] = True
    return special


def pretrain_inputs(batch: Batch, sparse: FlipSparse, sampler: AliasSampler | None, obj: Objectives,
                    r_text: float, r_tab: float, num_noise: int, text: TextIds,
                    generator: torch.Generator | None, shard: RowShard = LOCAL) -> dict[str, torch.Tensor | None]:
    """Mask both modalities, look up every sparse row the step needs (one feature-table lookup
    for x and x^ together, one NCE-table lookup for all positives and noise), and return the
    dense forward's keyword arguments. `sparse` may be sharded (its lookups are then collectives).
    `shard`: this rank's slice of the global batch, for draws that do not depend on the split."""
    masked_ids, tab_masked = mask_tab_fields(batch.feature_ids, r_tab, MASK_ID, generator, shard)
    if obj.field_masking:
        tm = mask_text_fields(batch.input_ids, batch.field_spans, r_text, text.mask_token_id, generator, shard)
    else:
        tm = mask_text_tokens(batch.input_ids, batch.attention_mask, special_positions(batch.attention_mask),
                              r_text, text.mask_token_id, text.vocab_size, generator, shard)
    emb = sparse.embed(torch.cat([batch.feature_ids, masked_ids]))
    B = len(batch)
    nce_rows = log_kq = None
    if obj.mtm:
        rows, fields = tab_masked.nonzero(as_tuple=True)
        positives = batch.feature_ids[rows, fields]
        # Every row masks the same number of fields, so the global draw splits evenly by rank.
        noise = shard.rows(sampler.sample((shard.world * positives.numel(), num_noise), generator=generator),
                           positives.numel())
        candidates = torch.cat([positives[:, None], noise], dim=1)                 # (N, 1+K)
        nce_rows = sparse.nce(candidates)
        # log(K q_j); a floor keeps a positive the sampler cannot draw (count 0) finite.
        log_q = sampler.log_prob(candidates).clamp_min(sampler.min_log_prob)
        log_kq = math.log(num_noise) + log_q
    return dict(emb=emb[:B], emb_masked=emb[B:], input_ids=batch.input_ids, masked_input_ids=tm.input_ids,
                attention_mask=batch.attention_mask, mlm_labels=tm.labels, tab_masked=tab_masked,
                nce_rows=nce_rows, log_kq=log_kq)


def finetune_inputs(batch: Batch, sparse: FlipSparse | None) -> dict[str, torch.Tensor | None]:
    emb = sparse.embed(batch.feature_ids) if sparse is not None else None
    return dict(emb=emb, input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)

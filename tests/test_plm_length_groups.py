"""The PLM on rows grouped by length (model.plm_length_groups): on a real ML-100K batch the states
at real tokens and the gradients are the ungrouped ones to float rounding, in the batch's row
order, and the PLM computes fewer FLOPs (less padding)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from flip_dist.data.batches import first_rows
from flip_dist.data.manifest import read_manifest
from flip_dist.models.plm import encode_by_length, load_plm


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_grouped_states_and_gradients_equal_one_padded_call(ml100k_processed):
    pad = read_manifest(ml100k_processed).text_pad_id
    batch = first_rows(ml100k_processed, "train", 32, pad)
    ids, mask = batch.input_ids, batch.attention_mask
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max() == ids.shape[1]          # real prompts differ in length
    torch.manual_seed(0)
    plm, _ = load_plm("minilm", num_layers=2)
    weight = plm.get_input_embeddings().weight

    def run(groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight.grad = None
        states = encode_by_length(plm, ids, mask, groups)
        (states * mask[..., None]).square().sum().backward()        # reads real tokens only
        return states.detach(), weight.grad.clone()

    one, grad_one = run(1)
    four, grad_four = run(4)
    real = mask.bool()
    assert four.shape == one.shape
    torch.testing.assert_close(four[real], one[real], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_four, grad_one, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        grouped, padded = (_flops(lambda g=g: encode_by_length(plm, ids, mask, g)) for g in (4, 1))
    assert grouped < 0.97 * padded


def test_one_call_when_grouping_saves_nothing(ml100k_processed):
    """Too few rows for the groups, or rows of one length: the PLM's own output, bit for bit."""
    pad = read_manifest(ml100k_processed).text_pad_id
    batch = first_rows(ml100k_processed, "train", 16, pad)
    plm, _ = load_plm("minilm", num_layers=1)
    n = int(batch.attention_mask.sum(1).min())
    same = batch.input_ids[:, :n], batch.attention_mask[:, :n]            # every row n tokens long
    few = batch.input_ids[:3], batch.attention_mask[:3]
    with torch.no_grad():
        for ids, mask in (same, few):
            assert torch.equal(encode_by_length(plm, ids, mask, 4),
                               plm(input_ids=ids, attention_mask=mask).last_hidden_state)

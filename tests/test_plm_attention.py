"""The PLM's attention on CPU: SDPA itself in fp32 (bit-identical), matmul + softmax + matmul in
bf16 (PyTorch's CPU flash kernel is ~3.5x slower there: tools/bench_precision.py), which must
agree with SDPA's bf16 output as closely as bf16 allows, padding masked alike."""
from __future__ import annotations

import copy

import torch

from flip_dist.models.plm import CPU_BF16_ATTENTION, load_plm


def _inputs(minilm, texts):
    enc = minilm(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_fp32_is_sdpa_bit_for_bit_and_bf16_agrees_with_sdpa(minilm):
    ours, _ = load_plm("minilm", num_layers=2)
    assert ours.config._attn_implementation == CPU_BF16_ATTENTION
    sdpa = copy.deepcopy(ours)
    sdpa.set_attn_implementation("sdpa")
    ids, mask = _inputs(minilm, ["a short prompt", "user 12 rated the movie Toy Story (1995), an animation, "
                                 "comedy; occupation: programmer, age 25"])
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        b = sdpa(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(a, b)
        ours_bf16, sdpa_bf16 = ours.to(torch.bfloat16), sdpa.to(torch.bfloat16)
        a16 = ours_bf16(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        b16 = sdpa_bf16(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    real = mask.bool()
    err_ours = (a16 - a)[real].abs().max()
    err_sdpa = (b16 - a)[real].abs().max()
    assert err_ours <= 2 * err_sdpa + 1e-2, (err_ours, err_sdpa)     # bf16's own rounding, no more
    # The short prompt's padding changes nothing of its real tokens' states.
    with torch.no_grad():
        alone = ours_bf16(input_ids=ids[:1, :int(mask[0].sum())],
                          attention_mask=mask[:1, :int(mask[0].sum())]).last_hidden_state.float()
    assert (alone[0] - a16[0, :int(mask[0].sum())]).abs().max() < 0.1

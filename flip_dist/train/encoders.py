"""The two encoders every stage starts from, the PLM and the ID model, built for a processed
dataset after checking that its token ids are the PLM's."""
from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn

from flip_dist.config import FlipConfig, ModelConfig
from flip_dist.data.manifest import Manifest
from flip_dist.errors import FlipConfigError
from flip_dist.text_assets import MINILM, ROBERTA_BPE


class Encoders(NamedTuple):
    plm: nn.Module
    id_model: nn.Module
    info: Any                  # flip_dist.models.plm.PLMInfo: hidden and vocabulary sizes, tokenizer


def _check_text(manifest: Manifest, plm: str, tokenizer: str, vocab_size: int) -> None:
    """Token ids mean nothing to a PLM of another vocabulary: refuse to start rather than train on
    silently wrong tokens."""
    named = {MINILM, ROBERTA_BPE}
    data_tok = manifest.tokenizer_name
    wrong_family = data_tok in named and tokenizer in named and data_tok != tokenizer
    if wrong_family or manifest.text_vocab_size > vocab_size:
        raise FlipConfigError(f"the dataset was tokenized with {data_tok} ({manifest.text_vocab_size} tokens) "
                              f"but the PLM {plm} expects {tokenizer} ({vocab_size}): "
                              "preprocess with the PLM's tokenizer (--tokenizer)")


def check_text_matches(manifest: Manifest, model: ModelConfig) -> None:
    """The same check from the PLM's config alone (the driver, before workers load weights)."""
    from flip_dist.models.plm import text_spec

    _check_text(manifest, model.plm, *text_spec(model.plm, model.plm_path))


def build_encoders(cfg: FlipConfig, manifest: Manifest) -> Encoders:
    from flip_dist.models.id_models import build_id_model
    from flip_dist.models.plm import load_plm

    m = cfg.model
    plm, info = load_plm(m.plm, m.plm_path, trust_remote_code=m.trust_remote_code, num_layers=m.plm_layers,
                         dropout=m.plm_dropout)
    _check_text(manifest, info.name, info.tokenizer, info.vocab_size)
    return Encoders(plm, build_id_model(m.id_model, manifest.num_fields, m.embed_dim, **m.id_params), info)

"""The two encoders every stage starts from, the PLM and the ID model, built for a processed
dataset after checking that its token ids are the PLM's."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from flip_dist.config import FlipConfig, ModelConfig, PreprocessConfig
from flip_dist.data.manifest import Manifest
from flip_dist.errors import FlipConfigError
from flip_dist.text_assets import MINILM, ROBERTA_BPE, fingerprint_of, has_tokenizer_files

log = logging.getLogger(__name__)


class Encoders(NamedTuple):
    plm: nn.Module
    id_model: nn.Module
    info: Any                  # flip_dist.models.plm.PLMInfo: hidden and vocabulary sizes, tokenizer


def _preprocess_command(tokenizer: str) -> str:
    """The command that re-tokenizes a dataset for `tokenizer` (named or a folder)."""
    return (f"flip-dist preprocess --config <your config> --set preprocess.tokenizer={tokenizer} "
            "--set preprocess.overwrite=true")


def _knows_numbering(tokenizer: str) -> bool:
    """Whether `tokenizer` can be loaded to fingerprint: a bundled name, or a folder with tokenizer
    files (a PLM folder of weights only, e.g. an export's plm_hf/, has none)."""
    return tokenizer in (MINILM, ROBERTA_BPE) or has_tokenizer_files(tokenizer)


def _check_text(manifest: Manifest, plm: str, tokenizer: str, vocab_size: int) -> None:
    """Token ids mean nothing to a PLM of another numbering: refuse to start rather than train on
    silently wrong tokens. Compares what the ids mean (fingerprints), not names or sizes:
    'roberta-bpe' and a real RoBERTa checkpoint's tokenizer both have 50k tokens, in other orders."""
    data_tok = manifest.tokenizer_name
    if not _knows_numbering(tokenizer):
        log.warning("PLM %s: its folder %s has no tokenizer files, so the dataset's token ids (%s) cannot be "
                    "checked against it; only the vocabulary size is", plm, tokenizer, data_tok)
    elif manifest.tokenizer_fingerprint != (want := fingerprint_of(tokenizer)):
        raise FlipConfigError(
            f"the dataset was tokenized with {data_tok} ({manifest.text_vocab_size} tokens, tokenizer_fingerprint "
            f"{manifest.tokenizer_fingerprint}) but the PLM {plm} expects {tokenizer} ({vocab_size} embeddings, "
            f"{want}): the same id means another token. Preprocess again with the PLM's tokenizer: "
            f"{_preprocess_command(tokenizer)}")
    if manifest.text_vocab_size > vocab_size:
        raise FlipConfigError(f"the dataset's tokenizer {data_tok} has {manifest.text_vocab_size} tokens but the "
                              f"PLM {plm} has {vocab_size} embeddings (its config.json vocab_size)")


def check_text_matches(manifest: Manifest, model: ModelConfig) -> None:
    """The same check from the PLM's config alone (the driver, before workers load weights)."""
    from flip_dist.models.plm import text_spec

    _check_text(manifest, model.plm, *text_spec(model.plm, model.plm_path))


def preprocess_tokenizer(cfg: FlipConfig) -> str:
    """The tokenizer preprocessing must use for this config: the PLM's own tokenizer folder (the
    files beside model.plm_path, or a PLM folder) when preprocess.tokenizer names a bundled one of
    another numbering, so the shards' ids are the ones the PLM was trained on; else as configured."""
    from flip_dist.models.plm import text_spec

    configured = cfg.preprocess.tokenizer
    m = cfg.model
    if m.plm_path is None and not Path(m.plm).is_dir():
        return configured
    wanted = text_spec(m.plm, m.plm_path)[0]
    if wanted in (MINILM, ROBERTA_BPE) or not has_tokenizer_files(wanted) or configured not in (MINILM, ROBERTA_BPE):
        return configured       # no tokenizer of its own; or a folder the user chose (training checks it)
    if fingerprint_of(configured) == fingerprint_of(wanted):
        return configured
    log.info("preprocess.tokenizer=%s numbers tokens unlike the PLM %s; preprocessing with its tokenizer %s",
             configured, m.plm, wanted)
    return wanted


def preprocess_config(cfg: FlipConfig) -> PreprocessConfig:
    """cfg.preprocess with the tokenizer preprocess_tokenizer picks (cfg itself unchanged)."""
    tokenizer = preprocess_tokenizer(cfg)
    if tokenizer == cfg.preprocess.tokenizer:
        return cfg.preprocess
    return dataclasses.replace(cfg.preprocess, tokenizer=tokenizer)


def build_encoders(cfg: FlipConfig, manifest: Manifest) -> Encoders:
    from flip_dist.models.id_models import build_id_model
    from flip_dist.models.plm import load_plm

    m = cfg.model
    plm, info = load_plm(m.plm, m.plm_path, trust_remote_code=m.trust_remote_code, num_layers=m.plm_layers,
                         dropout=m.plm_dropout)
    _check_text(manifest, info.name, info.tokenizer, info.vocab_size)
    return Encoders(plm, build_id_model(m.id_model, manifest.num_fields, m.embed_dim, **m.id_params), info)

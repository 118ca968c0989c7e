"""The nine ID-based models of the paper's Table II, by name, behind one interface (`IDModel`):
E (B, F, D) from `FeatureEmbedding` in, (v (B, out_dim), logit (B,)) out."""
from __future__ import annotations

import inspect
from typing import Any

from flip_dist.config import ID_MODEL_NAMES
from flip_dist.errors import FlipConfigError
from flip_dist.models.id_models.afm import AFM
from flip_dist.models.id_models.afn import AFN
from flip_dist.models.id_models.autoint import AutoInt
from flip_dist.models.id_models.base import IDModel
from flip_dist.models.id_models.dcn import DCN
from flip_dist.models.id_models.dcnv2 import DCNv2
from flip_dist.models.id_models.deepfm import DeepFM
from flip_dist.models.id_models.pnn import PNN
from flip_dist.models.id_models.widedeep import WideDeep
from flip_dist.models.id_models.xdeepfm import XDeepFM

ID_MODELS: dict[str, type[IDModel]] = {
    "dcnv2": DCNv2,  # the paper's default
    "deepfm": DeepFM,
    "autoint": AutoInt,
    "afm": AFM,
    "pnn": PNN,
    "widedeep": WideDeep,
    "dcn": DCN,
    "xdeepfm": XDeepFM,
    "afn": AFN,
}
DEFAULT_ID_MODEL = "dcnv2"
if tuple(ID_MODELS) != ID_MODEL_NAMES:   # the config validates names without importing this module
    raise ImportError(f"ID_MODELS {tuple(ID_MODELS)} differ from config.ID_MODEL_NAMES {ID_MODEL_NAMES}")


def build_id_model(name: str, num_fields: int, embed_dim: int, **hparams: Any) -> IDModel:
    """The model registered as `name`; unknown names and hyperparameters are config errors."""
    cls = ID_MODELS.get(name)
    if cls is None:
        raise FlipConfigError(f"unknown ID model {name!r}; known: {', '.join(sorted(ID_MODELS))}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters
               if p not in ("self", "num_fields", "embed_dim")]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise FlipConfigError(f"unknown hyperparameter(s) {unknown} for ID model {name!r}; "
                              f"allowed: {allowed}")
    try:
        return cls(num_fields, embed_dim, **hparams)
    except (ValueError, TypeError, IndexError) as e:  # e.g. an empty dnn_hidden
        raise FlipConfigError(f"ID model {name!r} with {hparams}: {e}") from e


__all__ = ["DEFAULT_ID_MODEL", "ID_MODELS", "IDModel", "build_id_model"]

"""The paper's analyses of a pretrained FLIP, as functions, JSON and PNGs.

- field_alignment.py: RQ5 (Fig. 9), the field-by-field similarity of masked text and masked
  tabular inputs through the ICL projections: does pretraining align the two modalities field
  by field (a bright diagonal)?
- embedding_spectrum.py: RQ6 (Fig. 2, 8), the SVD of the learned feature embedding table: do the
  embeddings collapse into a narrow cone (a few singular values carry everything)?
- commands.py: `flip-dist analyze`, and `run_analyses` that it and experiment runners call.

Names are imported on first use: the command line imports commands.py to build its parser, and
must not pay for torch and matplotlib there."""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"field_similarity": "field_alignment", "plot_field_similarity": "field_alignment",
          "embedding_spectrum": "embedding_spectrum", "plot_embedding_scatter": "embedding_spectrum",
          "plot_singular_values": "embedding_spectrum", "run_analyses": "commands", "add_commands": "commands"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)

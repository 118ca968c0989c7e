"""Which parts of the pretraining loss (Eq. 14) run: every Table VII variant by name. Torch-free,
so that the config can validate a name without importing the model code."""
from __future__ import annotations

from dataclasses import dataclass

from flip_dist.errors import FlipConfigError


@dataclass(frozen=True)
class Objectives:
    """Which parts of Eq. 14 run, and how: every Table VII variant is one of these."""

    mlm: bool = True
    mtm: bool = True
    icl: bool = True
    field_masking: bool = True     # False: BERT-style random token masking
    joint: bool = True             # False: each modality reconstructs itself alone


ABLATIONS = {
    "full": Objectives(),
    "no_mlm": Objectives(mlm=False),
    "no_mtm": Objectives(mtm=False),
    "no_icl": Objectives(icl=False),
    "no_mlm_mtm": Objectives(mlm=False, mtm=False),
    "none": Objectives(mlm=False, mtm=False, icl=False),      # no pretraining at all
    "no_field_masking": Objectives(field_masking=False),
    "no_joint": Objectives(joint=False),
}


def objectives(name: str) -> Objectives:
    if name not in ABLATIONS:
        raise FlipConfigError(f"pretrain.objectives {name!r}: one of {sorted(ABLATIONS)}")
    return ABLATIONS[name]

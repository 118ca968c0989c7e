"""The three stages of a FLIP run, each one typed object that both runtimes loop over.

A stage knows its config section, the checks to run before anything starts, which stage its
`init` must come from, how to build its modules given the runtime's tables (whole in one process,
sharded by TorchRec over Ray Train workers), and the inputs and losses of one step. The single
process (flip_dist.train.local) and the Ray worker (flip_dist.distributed.worker) differ only in
how they hold tables, step optimizers and move data; what a stage is lives here once."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from flip_dist.checkpoints import check_export, load_export, read_meta
from flip_dist.config import FinetuneConfig, FlipConfig, PretrainConfig
from flip_dist.data.batches import Batch
from flip_dist.data.manifest import Manifest
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.models.masking import LOCAL, RowShard
from flip_dist.models.objectives import Objectives, objectives
from flip_dist.train.encoders import Encoders, build_encoders
from flip_dist.train.steps import TextIds, finetune_inputs, pretrain_inputs

log = logging.getLogger(__name__)


class Tables(Protocol):
    """How a runtime holds the feature table E and the NCE output table."""

    device: torch.device              # where lookups return their rows

    def build(self, manifest: Manifest, embed_dim: int, nce_dim: int | None, settings: Any) -> nn.Module:
        """The tables (with their optimizer where the runtime fuses it into backward)."""

    def init_nce_bias(self, sparse: nn.Module, counts: np.ndarray, mode: str) -> None:
        """b_j of every NCE output row from the train frequencies (Eq. 10)."""

    def load(self, sparse: nn.Module, table: str, weight: torch.Tensor) -> None:
        """A whole pretrained table into the runtime's tables (which may be shards of it)."""

    def lookups(self, sparse: nn.Module) -> nn.Module:
        """The FlipSparse whose `embed` / `nce` a step calls."""

    def export(self, sparse: nn.Module) -> dict[str, torch.Tensor]:
        """The whole tables by export name ('embedding', 'nce'), gathered where sharded (a
        collective: every rank calls it; the whole tables come back on rank 0 only)."""


@dataclass
class StageModel:
    """What a stage trains or evaluates."""

    encoders: Encoders
    sparse: nn.Module | None          # None when nothing is looked up (FLIP_PLM)
    dense: nn.Module                  # FlipPretrainDense or FlipFinetuneDense
    sampler: Any = None               # the NCE noise sampler (pretraining with MTM)
    text: TextIds | None = None       # [MASK] id and vocabulary size for text masking


class Stage:
    """One stage, bound to a run's config. Subclasses set the class attributes."""

    name: ClassVar[str]
    section: ClassVar[str]            # the config section holding its settings
    init_stage: ClassVar[str]         # the stage whose export its `init` must be
    needs_init: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    loads_heads: ClassVar[bool]       # from `init`: the heads too, not only encoders and tables
    adamw: ClassVar[bool] = False     # the dense optimizer: AdamW (pretraining) or Adam
    loss_key: ClassVar[str] = "loss"  # the loss that backward starts from
    evaluates_after: ClassVar[bool] = False   # a finished run is evaluated on the test split

    def __init__(self, cfg: FlipConfig) -> None:
        self.cfg = cfg

    @property
    def settings(self) -> PretrainConfig | FinetuneConfig:
        return getattr(self.cfg, self.section)

    @property
    def init(self) -> str | None:
        return self.settings.init

    @property
    def label(self) -> str:
        """What progress bars and logs call this stage."""
        return self.name

    # ------------------------------------------------------------------ steps and checks
    def worker_batch(self, world: int) -> int:
        """Rows each of `world` ranks trains per step. `batch_size` is the global batch (as the
        paper's 1024 and 256 are), so one config trains the same model on any number of workers."""
        B = self.settings.batch_size
        if B % world:
            lower, upper = B - B % world, B + world - B % world
            choices = f"{lower} or {upper}" if lower else f"at least {upper}"
            raise FlipConfigError(f"{self.section}.batch_size={B} is the global batch and must split evenly over "
                                  f"dist.num_workers={world}: use {choices}")
        return B // world

    def steps_per_epoch(self, num_train: int, world: int) -> int:
        """Steps of one epoch over `world` ranks; a batch that the split cannot fill is an error."""
        per_epoch = num_train // world // self.worker_batch(world)
        if self.trains and per_epoch == 0:
            raise FlipConfigError(f"{self.section}.batch_size={self.settings.batch_size} (global) needs "
                                  f"more than the {num_train} train rows")
        return per_epoch

    def total_steps(self, num_train: int, world: int) -> int:
        s = self.settings
        total = self.steps_per_epoch(num_train, world) * s.epochs
        return min(total, s.max_steps) if s.max_steps else total

    def preflight(self, manifest: Manifest, world: int) -> None:
        """What can be checked from the config and the dataset's manifest alone, before a model
        is built or a worker started."""
        if self.trains:
            s, available = self.settings, self.steps_per_epoch(manifest.num_train, world) * self.settings.epochs
            if s.max_steps > available:
                log.warning("%s.max_steps=%d, but %d epoch(s) of %d train rows give %d steps: training %d (raise "
                            "%s.epochs for more)", self.section, s.max_steps, s.epochs, manifest.num_train,
                            available, available, self.section)
        self.check_init(manifest)

    def check_init(self, manifest: Manifest) -> None:
        """`init`, where given or needed, is an export of `init_stage` on this dataset."""
        if self.needs_init and not self.init:
            raise FlipConfigError(f"{self.name} needs {self.section}.init: a {self.init_stage} export folder")
        if self.init:
            check_export(self.init, self.init_stage, manifest, f"{self.section}.init")

    # ------------------------------------------------------------------ model
    def build(self, manifest: Manifest, data_dir: str | Path, tables: Tables, rank: int = 0) -> StageModel:
        """The stage's modules, seeded by (seed, rank) alone, started from `init` if given."""
        self.check_init(manifest)
        torch.manual_seed(self.settings.seed + rank)
        enc = build_encoders(self.cfg, manifest)
        model = self._build(manifest, Path(data_dir), tables, enc)
        if self.init:
            def load_table(table: str, weight: torch.Tensor) -> None:
                if weight.shape[0] != manifest.num_features:
                    raise FlipDataError(f"table {table} has {weight.shape[0]} rows, the dataset "
                                        f"{manifest.num_features} features: another dataset's?", path=str(self.init))
                if model.sparse is not None:
                    tables.load(model.sparse, table, weight)
            load_export(self.init, enc.plm, enc.id_model, load_table, model.dense if self.loads_heads else None)
        return model

    def _build(self, manifest: Manifest, data_dir: Path, tables: Tables, enc: Encoders) -> StageModel:
        raise NotImplementedError

    def inputs(self, model: StageModel, lookups: nn.Module | None, batch: Batch, generator: torch.Generator,
               shard: RowShard = LOCAL) -> dict[str, Any]:
        """The dense forward's keyword arguments for one batch (lookups done, masks drawn)."""
        return finetune_inputs(batch, lookups)

    def losses(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of a forward's output (what is logged; `loss_key` is backpropagated)."""
        return {k: v for k, v in out.items() if k.startswith("loss")}

    def extras(self, model: StageModel) -> dict[str, torch.Tensor]:
        """What the last forward measured beside its losses, logged next to them."""
        return {}


class PretrainStage(Stage):
    """Eq. 14: MLM + MTM + ICL (a Table VII variant by `pretrain.objectives`)."""

    name = section = "pretrain"
    init_stage = "pretrain"         # continued pretraining
    loads_heads = True
    adamw = True
    loss_key = "total"

    @property
    def objectives(self) -> Objectives:
        return objectives(self.settings.objectives)

    @property
    def label(self) -> str:
        return f"pretrain[{self.settings.objectives}]"

    def _build(self, manifest: Manifest, data_dir: Path, tables: Tables, enc: Encoders) -> StageModel:
        from flip_dist.models.flip import FlipPretrainDense
        from flip_dist.models.sampling import AliasSampler

        m, obj = self.cfg.model, self.objectives
        sparse = tables.build(manifest, m.embed_dim, m.nce_dim if obj.mtm else None, self.settings)
        sampler = None
        if obj.mtm:
            counts = np.load(data_dir / "feature_counts.npy")
            tables.init_nce_bias(sparse, counts, m.nce_bias_init)
            sampler = AliasSampler(counts, device=tables.device)
        dense = FlipPretrainDense(enc.plm, enc.id_model, enc.info.hidden_size, enc.info.vocab_size,
                                  manifest.num_fields, obj, m.nce_dim, m.mtm_hidden, m.icl_dim, self.settings.tau,
                                  m.icl_norm, m.mlm_tied, m.plm_length_groups)
        if obj.icl:
            self._check_cls(enc, manifest, data_dir)
        return StageModel(enc, sparse, dense, sampler, TextIds(manifest.text_mask_id, enc.info.vocab_size))

    def _check_cls(self, enc: Encoders, manifest: Manifest, data_dir: Path) -> None:
        """ICL aligns [CLS] with v: warn when the PLM gives different prompts the same [CLS] state
        (a PLM cut to its first layers does), since ICL then cannot learn (it stays at ln B)."""
        from flip_dist.data.batches import first_rows
        from flip_dist.models.plm import MIN_CLS_SPREAD, cls_spread

        batch = first_rows(data_dir, "train", 32, manifest.text_pad_id)
        if batch is None or len(batch) < 2:
            return
        spread = cls_spread(enc.plm, batch.input_ids, batch.attention_mask)
        if spread < MIN_CLS_SPREAD:
            log.warning("the PLM (model.plm=%s, model.plm_layers=%d) gives %d different prompts nearly the same [CLS] "
                        "state (spread %.2g%% of its norm): the contrastive objective (ICL) cannot learn from it. "
                        "Use more of the PLM's layers (model.plm_layers=0 keeps all).", self.cfg.model.plm,
                        self.cfg.model.plm_layers, len(batch), 100 * spread)

    def inputs(self, model: StageModel, lookups: nn.Module | None, batch: Batch, generator: torch.Generator,
               shard: RowShard = LOCAL) -> dict[str, Any]:
        s = self.settings
        return pretrain_inputs(batch, lookups, model.sampler, self.objectives, s.r_text, s.r_tab, s.num_noise,
                               model.text, generator, shard)

    def losses(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return out

    def extras(self, model: StageModel) -> dict[str, torch.Tensor]:
        icl = getattr(model.dense, "icl", None)
        return {"icl_acc": icl.last_accuracy} if icl is not None and icl.last_accuracy is not None else {}


class FinetuneStage(Stage):
    """Eq. 15-19 in the mode `finetune.mode` (FLIP, FLIP_ID, FLIP_PLM), from a pretraining export
    or from scratch; evaluated on the test split when it ends."""

    name = section = "finetune"
    init_stage = "pretrain"
    loads_heads = False             # new heads: the pretraining heads are not the finetuning ones
    evaluates_after = True

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def label(self) -> str:
        return f"{self.name}[{self.mode}]"

    def _build(self, manifest: Manifest, data_dir: Path, tables: Tables, enc: Encoders) -> StageModel:
        from flip_dist.models.flip import FlipFinetuneDense

        mode = self.mode
        sparse = tables.build(manifest, self.cfg.model.embed_dim, None, self.settings) if mode != "flip_plm" else None
        torch.manual_seed(self.settings.seed)   # the new layers depend on the seed alone, whatever the runtime
        return StageModel(enc, sparse, FlipFinetuneDense(mode, enc.id_model, enc.plm, enc.info.hidden_size,
                                                            self.cfg.model.plm_length_groups))


class EvaluateStage(FinetuneStage):
    """AUC / logloss of a finetuning export (`finetune.init`) on the whole test split."""

    name = "evaluate"
    init_stage = "finetune"
    needs_init = True
    trains = False
    loads_heads = True
    evaluates_after = False

    @property
    def mode(self) -> str:
        """The mode the export was finetuned in (its heads are that mode's)."""
        return read_meta(self.init).get("config", {}).get("finetune", {}).get("mode", self.settings.mode)


STAGES: dict[str, type[Stage]] = {s.name: s for s in (PretrainStage, FinetuneStage, EvaluateStage)}


def get_stage(name: str, cfg: FlipConfig) -> Stage:
    if name not in STAGES:
        raise FlipConfigError(f"stage {name!r}: one of {tuple(STAGES)}")
    return STAGES[name](cfg)


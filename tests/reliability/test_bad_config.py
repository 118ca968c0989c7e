"""Bad configs end in one clear FlipConfigError naming the file, line or key, before anything runs:
undecodable files, keys given twice, non-finite / negative / absurd values, `true` where a number
belongs, unknown DeepSpeed presets, more workers than the cluster has, a PLM that does not read the
dataset's tokens, a starting checkpoint of another dataset."""
from __future__ import annotations

import json
import shutil

import pytest

from flip_dist.config import load_config
from flip_dist.errors import FlipConfigError


def _write(tmp_path, text: str | bytes):
    path = tmp_path / "exp.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("content, message", [
    (b"pretrain:\n  lr: 1.0e-4\n  # caf\xe9\n", r"exp\.yaml is not UTF-8 text \(byte \d+, line 3\)"),
    ("pretrain:\n  lr: 1.0e-4\nfinetune:\n  lr: 1.0e-4\npretrain:\n  batch_size: 8\n",
     r"exp\.yaml: key 'pretrain' appears twice in one mapping \(lines 1 and 5\)"),
    ("pretrain:\n  lr: 1.0e-4\n  lr: 3.0e-4\n", r"key 'lr' appears twice in one mapping \(lines 2 and 3\)"),
    ("- pretrain\n- finetune\n", r"exp\.yaml: expected a mapping of sections, got list"),
    ("pretrain: [unclosed\n", r"exp\.yaml is not valid YAML"),
], ids=["not-utf8", "duplicate-section", "duplicate-key", "not-a-mapping", "broken-yaml"])
def test_bad_config_files_name_the_file_and_line(tmp_path, content, message, tally):
    with pytest.raises(FlipConfigError, match=message):
        load_config(_write(tmp_path, content))
    tally("bad_input")


@pytest.mark.parametrize("override, message", [
    ("pretrain.tau=.nan", "'pretrain.tau': expected a finite number"),
    ("pretrain.lr=.inf", "'pretrain.lr': expected a finite number"),
    ("pretrain.r_text=-.inf", "'pretrain.r_text': expected a finite number"),
    ("pretrain.lr=-1e-4", "'pretrain.lr/embed_lr': must be in"),
    ("finetune.weight_decay=-0.1", "'finetune.weight_decay': must be >= 0"),
    ("preprocess.max_bad_fraction=-0.1", "'preprocess.max_bad_fraction': must be in"),
    ("dist.num_workers=-2", "'dist.num_workers': must be in 1.."),
    ("pretrain.tau=true", "'pretrain.tau': expected a number, got True"),
    ("pretrain.batch_size=true", "'pretrain.batch_size': expected an integer"),
    ("pretrain.batch_size=1000000000", "'pretrain.batch_size': must be in 1..1048576"),
    ("model.embed_dim=1000000", "'model.embed_dim': must be in 1..16384"),
    ("dist.num_workers=100000", "'dist.num_workers': must be in 1..4096"),
    ("preprocess.max_line_bytes=10", "'preprocess.max_line_bytes': must be in 64.."),
    ("dist.max_failures=-1", "'dist.max_failures': must be in 0..1000"),
])
def test_bad_values_are_refused_with_their_key(override, message, tally):
    with pytest.raises(FlipConfigError, match=message):
        load_config(None, [override])
    tally("bad_input")


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from flip_dist.cli import main

    path = _write(tmp_path, b"pretrain:\n  lr: \xff\n")
    assert main(["pretrain", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flip-dist: error: config file") and "exp.yaml" in err[0]


@pytest.fixture()
def cfg(tmp_path):
    from reliability.helpers import small_dist_config

    return small_dist_config(tmp_path)


def test_an_unknown_deepspeed_preset_fails_before_any_worker(cfg, ml100k_processed, tmp_path, tally):
    from flip_dist.distributed.trainer import run_stage

    cfg.dist.ds_config = "zero7_turbo"
    with pytest.raises(FlipConfigError, match="zero7_turbo"):
        run_stage(cfg, "pretrain", ml100k_processed)
    assert not (tmp_path / "pre").exists()
    tally("bad_input")


def test_more_workers_than_the_cluster_has_fail_fast(cfg, ml100k_processed, ray_local, tmp_path, tally):
    """The session's Ray has 2 CPUs; 64 workers x 0.5 CPU would wait forever for a placement."""
    from flip_dist.distributed.trainer import run_stage

    cfg.dist.num_workers = 64
    cfg.pretrain.batch_size = 64            # the global batch: one row a worker
    with pytest.raises(FlipConfigError, match=r"cannot place this run's workers: CPU has 2, needs 32"):
        run_stage(cfg, "pretrain", ml100k_processed)
    tally("bad_input")


def test_a_plm_that_cannot_read_the_dataset_tokens_is_refused(cfg, ml100k_processed, tally):
    """ML-100K was tokenized with MiniLM's WordPiece; RoBERTa's BPE ids mean other tokens."""
    from flip_dist.distributed.trainer import run_stage

    cfg.model.plm, cfg.model.plm_layers = "roberta-base", 0
    with pytest.raises(FlipConfigError, match="tokenized with minilm .* expects roberta-bpe"):
        run_stage(cfg, "pretrain", ml100k_processed)
    tally("bad_input")


def test_starting_from_a_checkpoint_of_another_dataset_is_refused(cfg, ml100k_processed, tmp_path, tally):
    from flip_dist.distributed.trainer import run_stage
    from flip_dist.train.local import build_local, export_local

    stage, model = build_local(cfg, "pretrain", ml100k_processed)
    export = export_local(cfg, tmp_path / "export", stage, model, ml100k_processed, steps=0)
    meta = json.loads((export / "meta.json").read_text())
    other = tmp_path / "other"
    shutil.copytree(export, other)
    (other / "meta.json").write_text(json.dumps({**meta, "dataset_fingerprint": "0123456789abcdef",
                                                 "data": "data/processed/bookcrossing"}))
    cfg.pretrain.init = str(other)
    with pytest.raises(FlipConfigError, match="trained on another dataset"):
        run_stage(cfg, "pretrain", ml100k_processed)
    cfg.finetune.init = str(other)
    with pytest.raises(FlipConfigError, match="trained on another dataset"):
        run_stage(cfg, "finetune", ml100k_processed)
    tally("bad_input")

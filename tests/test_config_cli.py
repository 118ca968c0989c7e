"""Typed config validation (one place, names the key) and the thin command line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flip_dist.config import load_config
from flip_dist.errors import FlipConfigError

REPO = Path(__file__).resolve().parent.parent


def test_yaml_experiments_load_and_validate():
    for path in sorted((REPO / "ray_jobs" / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.preprocess.dataset == {"ml100k": "ml-100k", "ml1m": "ml-1m"}.get(path.stem, path.stem)


def test_overrides_are_typed(tmp_path):
    cfg = load_config(REPO / "ray_jobs/configs/ml100k.yaml",
                      ["preprocess.max_length=64", "preprocess.overwrite=false", "ray.num_cpus=1"])
    assert cfg.preprocess.max_length == 64 and cfg.preprocess.overwrite is False and cfg.ray.num_cpus == 1


def test_validating_a_config_does_not_import_torch():
    """`flip-dist preprocess` loads and validates the whole config: model names and objectives are
    checked against torch-free lists, so a data job does not pay torch's import (about 2 s)."""
    code = ("import sys; from flip_dist.config import load_config; "
            "cfg = load_config('ray_jobs/configs/ml100k.yaml', "
            "['model.id_model=autoint', 'pretrain.objectives=no_icl']); "
            "print(cfg.model.id_model, cfg.pretrain.objectives, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["autoint", "no_icl", "False"]
    with pytest.raises(FlipConfigError, match="model.id_model"):
        load_config(None, ["model.id_model=resnet"])


@pytest.mark.parametrize("override, message", [
    ("preprocess.max_lenght=64", "'preprocess.max_lenght' is unknown"),
    ("preprocess.max_length=abc", "'preprocess.max_length': expected an integer"),
    ("preprocess.max_length=2", "'preprocess.max_length': must be in 8..4096"),
    ("preprocess.dataset=imagenet", "'preprocess.dataset': must be one of"),
    ("preprocess.train_ratio=1.5", "'preprocess.train_ratio'"),
    ("preprocess.overwrite=maybe", "'preprocess.overwrite': expected true/false"),
    ("colour=blue", "'colour' is unknown"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(FlipConfigError, match=message):
        load_config(None, [override])


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("preprocess: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(FlipConfigError, match="not valid YAML"):
        load_config(p)


def test_cli_reports_errors_with_exit_code_2(tmp_path):
    exe = Path(sys.executable).parent / "flip-dist"
    proc = subprocess.run([str(exe), "preprocess", "--dataset", "imagenet", "--raw", str(tmp_path),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "config key 'preprocess.dataset': must be one of" in proc.stderr
    proc = subprocess.run([str(exe), "data", "get", "ml-1m", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "ml-1m cannot be fetched here" in proc.stderr


def test_setup_script_is_idempotent():
    proc = subprocess.run(["bash", str(REPO / "tools/setup.sh")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "is up to date" in proc.stdout


def _presets_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("pretrain:\n  batch_size: 8\n  lr: 1.0e-4\n"
                    "presets:\n"
                    "  big:\n    pretrain:\n      batch_size: 64\n    finetune:\n      epochs: 3\n"
                    "  small:\n    pretrain:\n      batch_size: 2\n")
    return path


def test_a_preset_layers_over_the_base_and_overrides_over_the_preset(tmp_path):
    path = _presets_file(tmp_path)
    base = load_config(path)
    assert (base.pretrain.batch_size, base.pretrain.lr, base.finetune.epochs) == (8, 1e-4, 1)
    big = load_config(path, preset="big")
    assert (big.pretrain.batch_size, big.pretrain.lr, big.finetune.epochs) == (64, 1e-4, 3)   # lr: the base's
    over = load_config(path, ["pretrain.batch_size=128", "pretrain.lr=3e-4"], preset="big")
    assert (over.pretrain.batch_size, over.pretrain.lr, over.finetune.epochs) == (128, 3e-4, 3)
    path.write_text(path.read_text() + "default_preset: small\n")
    assert load_config(path).pretrain.batch_size == 2
    assert load_config(path, preset="big").pretrain.batch_size == 64          # the argument wins


def test_an_unknown_preset_is_refused_naming_the_file_and_the_known_ones(tmp_path):
    path = _presets_file(tmp_path)
    with pytest.raises(FlipConfigError, match=r"exp\.yaml: unknown preset 'huge'; known presets: \['big', 'small'\]"):
        load_config(path, preset="huge")
    path.write_text(path.read_text() + "default_preset: bigg\n")
    with pytest.raises(FlipConfigError, match=r"exp\.yaml: unknown preset 'bigg'; known presets: \['big', 'small'\]"):
        load_config(path)


@pytest.mark.parametrize("preset, message", [
    ("  big:\n    pretrian:\n      batch_size: 64\n", "'presets.big.pretrian' is unknown"),
    ("  big:\n    pretrain:\n      batch_sise: 64\n", "'presets.big.pretrain.batch_sise' is unknown"),
    ("  big:\n    pretrain:\n      batch_size: 0\n", "'presets.big.pretrain.batch_size': must be in 1..1048576"),
    ("  big: [pretrain]\n", "'presets.big': expected a mapping of sections"),
])
def test_every_preset_is_validated_even_unused(tmp_path, preset, message):
    path = tmp_path / "exp.yaml"
    path.write_text("pretrain:\n  batch_size: 8\npresets:\n" + preset)
    with pytest.raises(FlipConfigError, match=message):
        load_config(path)


def test_the_shipped_ml100k_config_loads_with_and_without_the_paper_preset():
    path = REPO / "ray_jobs/configs/ml100k.yaml"
    cpu = load_config(path)
    assert (cpu.pretrain.batch_size, cpu.pretrain.max_steps, cpu.model.plm, cpu.model.plm_layers) == \
           (64, 150, "minilm", 0)
    paper = load_config(path, preset="paper")
    pt = paper.pretrain
    assert (pt.batch_size, pt.epochs, pt.lr, pt.warmup_ratio, pt.max_steps) == (1024, 30, 5e-5, 0.0, 0)
    assert (pt.r_text, pt.r_tab, pt.num_noise, pt.tau) == (0.15, 0.15, 25, 0.7)
    assert (paper.model.plm, paper.model.plm_layers, paper.model.id_model, paper.model.embed_dim) == \
           ("tinybert", 0, "dcnv2", 32)
    assert paper.finetune.batch_size == 256
    assert paper.preprocess == cpu.preprocess and paper.dist.num_workers == cpu.dist.num_workers   # the base's


def test_cli_takes_a_preset(tmp_path, capsys):
    from flip_dist.cli import build_parser, main, preprocess_config_from_args

    args = build_parser().parse_args(["preprocess", "--config", str(REPO / "ray_jobs/configs/ml100k.yaml"),
                                      "--preset", "paper"])
    assert preprocess_config_from_args(args).preprocess.dataset == "ml-100k"
    for command in ("pretrain", "finetune", "evaluate", "pipeline", "lr-search"):
        assert build_parser().parse_args([command, "--preset", "paper"]).preset == "paper"
    assert main(["pretrain", "--config", str(_presets_file(tmp_path)), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_the_table_optimizer_is_one_setting_for_both_stages():
    from flip_dist.config import FlipConfig

    cfg = FlipConfig()
    assert cfg.pretrain.table_optimizer == cfg.finetune.table_optimizer == "rowwise_adagrad"
    assert not hasattr(cfg.dist, "sparse_optimizer")
    with pytest.raises(FlipConfigError, match="'dist.sparse_optimizer' is unknown.*pretrain.table_optimizer"):
        load_config(None, ["dist.sparse_optimizer=adagrad"])
    cfg = load_config(None, ["pretrain.table_optimizer=sgd", "finetune.table_optimizer=adagrad"])
    assert (cfg.pretrain.table_optimizer, cfg.finetune.table_optimizer) == ("sgd", "adagrad")


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_adam_tables_on_cpu_are_refused_naming_the_key(stage):
    with pytest.raises(FlipConfigError, match=rf"'{stage}\.table_optimizer': adam is a GPU-only fused optimizer"):
        load_config(None, [f"{stage}.table_optimizer=adam"])
    assert getattr(load_config(None, [f"{stage}.table_optimizer=adam", "dist.use_gpu=true"]), stage) \
        .table_optimizer == "adam"
    assert getattr(load_config(None, [f"{stage}.table_optimizer=adam", "dist.sharding=none"]), stage) \
        .table_optimizer == "adam"


def test_assignments_are_validated_and_the_config_round_trips():
    import copy
    import json

    from flip_dist.config import FlipConfig

    cfg = load_config(REPO / "ray_jobs/configs/ml100k.yaml")
    with pytest.raises(FlipConfigError, match="'finetune.mode': must be flip, flip_id or flip_plm"):
        cfg.finetune.mode = "x"
    with pytest.raises(FlipConfigError, match="'pretrain.batch_size': expected an integer"):
        cfg.pretrain.batch_size = 2.5
    assert (cfg.finetune.mode, cfg.pretrain.batch_size) == ("flip", 64)      # unchanged
    cfg.finetune.init = tmp = Path("/tmp/x")                                  # a folder may be a Path
    assert cfg.finetune.init == str(tmp)
    cfg.pretrain.table_optimizer = "adam"            # fine for the section; the rule spans sections
    with pytest.raises(FlipConfigError, match="'pretrain.table_optimizer': adam is a GPU-only"):
        FlipConfig.from_dict(cfg.to_dict())
    with pytest.raises(FlipConfigError, match="'pretrain.table_optimizer': adam is a GPU-only"):
        cfg.pretrain = cfg.pretrain                  # re-assigning a section runs the rules across sections
    cfg.pretrain.table_optimizer = "rowwise_adagrad"
    data = json.loads(json.dumps(cfg.to_dict()))
    assert FlipConfig.from_dict(data) == cfg == copy.deepcopy(cfg)
    with pytest.raises(FlipConfigError, match="'<root>': expected a mapping"):
        FlipConfig.from_dict([1])

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
        assert cfg.preprocess.dataset in path.stem.replace("ml100k", "ml-100k")


def test_overrides_are_typed(tmp_path):
    cfg = load_config(REPO / "ray_jobs/configs/ml100k.yaml",
                      ["preprocess.max_length=64", "preprocess.overwrite=false", "ray.num_cpus=1"])
    assert cfg.preprocess.max_length == 64 and cfg.preprocess.overwrite is False and cfg.ray.num_cpus == 1


def test_validating_a_config_does_not_import_torch():
    """`flip-dist preprocess` loads and validates the whole config: model names and objectives are
    checked against torch-free lists, so a data job does not pay torch's import (about 2 s)."""
    code = ("import sys; from flip_dist.config import load_config; "
            "cfg = load_config('ray_jobs/configs/ml100k.yaml', ['model.id_model=autoint', 'pretrain.objectives=no_icl']); "
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

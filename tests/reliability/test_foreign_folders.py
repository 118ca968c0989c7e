"""No writer deletes what it did not write: an existing output folder is replaced only when it holds
that writer's own marker (or is empty). Each foreign folder is left byte for byte as it was."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _foreign(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("five years of work")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_preprocess_with_overwrite_never_replaces_a_foreign_folder(ml100k_raw, tmp_path, tally):
    from flip_dist.config import PreprocessConfig
    from flip_dist.data.preprocess import preprocess

    out = tmp_path / "out"
    before = _foreign(out)
    with pytest.raises(FileExistsError, match=r"holds no manifest\.json: flip_dist did not write it"):
        preprocess(PreprocessConfig(dataset="ml-100k", raw_dir=str(ml100k_raw), out_dir=str(out), overwrite=True))
    assert _snapshot(out) == before
    tally("bad_input")


def test_an_export_never_replaces_a_foreign_folder(tmp_path, tally):
    import torch

    from flip_dist.checkpoints import save_state_dicts

    out = tmp_path / "export"
    before = _foreign(out)
    with pytest.raises(FileExistsError, match=r"holds no meta\.json"):
        save_state_dicts(out, {"m": {"w": torch.zeros(2)}}, {"stage": "pretrain"})
    assert _snapshot(out) == before
    save_state_dicts(tmp_path / "ours", {"m": {"w": torch.zeros(2)}}, {"stage": "pretrain"})
    save_state_dicts(tmp_path / "ours", {"m": {"w": torch.ones(2)}}, {"stage": "pretrain"})   # ours: replaced
    tally("bad_input")


def test_the_cli_says_so_in_one_line(ml100k_raw, tmp_path, capsys):
    from flip_dist.cli import main

    out = tmp_path / "out"
    before = _foreign(out)
    code = main(["preprocess", "--dataset", "ml-100k", "--raw", str(ml100k_raw), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(out) in err[0] and "did not write it" in err[0]
    assert _snapshot(out) == before


def test_shipped_configs_do_not_overwrite():
    for path in sorted((REPO / "ray_jobs" / "configs").glob("*.yaml")):
        assert not yaml.safe_load(path.read_text()).get("preprocess", {}).get("overwrite", False), path

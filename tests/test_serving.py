"""Serving FLIP_ID without the PLM, on real ML-100K: a few finetuning steps in flip_id mode, the
export turned into one TorchScript file, and its scores on the test split equal to the
evaluation's (AUC, logloss, every row's probability). Also: flip / flip_plm exports refused,
bad rows named, no training stack imported by scoring, the CLI round trip."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from flip_dist.config import load_config
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.serving.commands import add_commands
from flip_dist.serving.export_id import export_id
from flip_dist.serving.score import score

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "ray_jobs" / "configs" / "ml100k.yaml"
QUICK = ["finetune.init=null", "finetune.max_steps=5", "finetune.batch_size=32", "finetune.eval_batch_size=1024"]
# What the scoring side must never import: the PLM, the training runtime, TorchRec, flip_dist's model code.
HEAVY = ("transformers", "ray", "deepspeed", "torchrec", "fbgemm_gpu", "torchmetrics", "flip_dist.models",
         "flip_dist.train", "flip_dist.checkpoints", "flip_dist.distributed", "flip_dist.data",
         "flip_dist.serving.export_id")


@pytest.fixture(scope="module")
def data_dir(request) -> Path:
    """The processed ML-100K of the repo (ray_jobs/configs/ml100k.yaml), else the session's own."""
    here = REPO / "data" / "processed" / "ml-100k"
    return here if (here / "manifest.json").is_file() else request.getfixturevalue("ml100k_processed")


def _finetune(data_dir: Path, folder: Path, overrides: list[str],
              check: bool = True) -> tuple[Path, dict, dict[int, float]]:
    """finetune_local's steps (train, evaluate on test) plus the export, and each test row's
    probability from the finetuning forward itself, by row_id (`check`: evaluate at all)."""
    from flip_dist.data.batches import ShardReader
    from flip_dist.train.local import evaluate, export_local, train_local
    from flip_dist.train.steps import finetune_inputs

    cfg = load_config(CONFIG, QUICK + [f"finetune.out_dir={folder}", *overrides])
    stage, model, history = train_local(cfg, "finetune", data_dir)
    export_local(cfg, folder, stage, model, data_dir, len(history))
    if not check:
        return folder, {}, {}
    reader = ShardReader(data_dir, "test")
    metrics = evaluate(model.sparse, model.dense, reader, cfg.finetune.eval_batch_size)
    probs: dict[int, float] = {}
    model.dense.eval()
    with torch.no_grad():
        for batch in reader.batches(1024):
            logit = model.dense(**finetune_inputs(batch, model.sparse))["logit"]
            probs.update(zip(batch.row_ids.tolist(), torch.sigmoid(logit).tolist()))
    return folder, metrics, probs


@pytest.fixture(scope="module")
def flip_id(data_dir, tmp_path_factory) -> tuple[Path, dict, dict[int, float]]:
    return _finetune(data_dir, tmp_path_factory.mktemp("ft") / "flip_id", ["finetune.mode=flip_id"])


@pytest.fixture(scope="module")
def served(flip_id, tmp_path_factory) -> Path:
    return export_id(flip_id[0], tmp_path_factory.mktemp("serve") / "flip_id")


def test_served_scores_equal_the_evaluation(flip_id, served, data_dir, tmp_path):
    export, evaluation, eager = flip_id
    assert evaluation["auc"] > 0.5 and evaluation["count"] == 7286      # trained, on the whole test split
    info = json.loads((served / "serving.json").read_text())
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert info["fields"] == manifest["fields"] and info["num_features"] == manifest["num_features"]
    assert info["dataset_fingerprint"] == json.loads((export / "meta.json").read_text())["dataset_fingerprint"]
    assert info["source_export"] == str(export.resolve()) and info["id_model"] == "dcnv2"
    from flip_dist.io_atomic import sha256_file
    assert info["sha256"] == sha256_file(served / "model.pt")
    assert sorted(p.name for p in served.iterdir()) == ["model.pt", "serving.json"]   # no PLM in it
    assert (served / "model.pt").stat().st_size < (export / "plm.pt").stat().st_size / 10

    out = tmp_path / "scores.parquet"
    result = score(served, data_dir, out, split="test", batch_size=1000)
    assert result["rows"] == evaluation["count"]
    assert result["auc"] == pytest.approx(evaluation["auc"], abs=1e-6)
    assert result["logloss"] == pytest.approx(evaluation["logloss"], abs=1e-6)

    table = pq.read_table(out)
    assert table.schema.names == ["row_id", "prob", "label"] and table.num_rows == 7286
    truth = pa.concat_tables([pq.read_table(f, columns=["row_id", "label"])
                              for f in sorted((data_dir / "test").glob("*.parquet"))])
    assert table["row_id"].to_pylist() == truth["row_id"].to_pylist()       # input order
    assert table["label"].to_pylist() == truth["label"].to_pylist()
    prob = table["prob"].to_numpy()
    want = np.array([eager[r] for r in table["row_id"].to_pylist()])
    np.testing.assert_allclose(prob, want, atol=1e-6)                       # row by row, not only the AUC
    assert prob.std() > 1e-4                                                # not a constant model

    # One shard alone, and a folder of shards, score the same rows as the dataset's split.
    first = sorted((data_dir / "test").glob("*.parquet"))[0]
    one = score(served / "model.pt", first, None)
    assert one["rows"] == pq.ParquetFile(first).metadata.num_rows and one["out"] is None
    assert score(served, data_dir / "test", None)["auc"] == pytest.approx(result["auc"], abs=1e-12)


def test_flip_and_flip_plm_exports_are_refused(flip_id, data_dir, tmp_path):
    export, _, _ = _finetune(data_dir, tmp_path / "flip", ["finetune.mode=flip", "finetune.max_steps=1",
                                                           "finetune.batch_size=8"], check=False)
    with pytest.raises(FlipConfigError, match=rf"{export} was finetuned with finetune.mode='flip'.*needs the PLM"):
        export_id(export, tmp_path / "out")
    # The same files under a flip_plm or a pretraining meta.json: refused from the meta alone.
    for key, value, message in (("mode", "flip_plm", "finetune.mode='flip_plm'"), ("stage", "pretrain", "'pretrain'")):
        fake = tmp_path / f"fake_{value}"
        shutil.copytree(flip_id[0], fake)
        meta = json.loads((fake / "meta.json").read_text())
        if key == "mode":
            meta["config"]["finetune"]["mode"] = value
        else:
            meta["stage"] = value
        (fake / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(FlipConfigError, match=f"{fake} .*{message}"):
            export_id(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _bad_shard(data_dir: Path, folder: Path, row: int, ids: list[int]) -> Path:
    """The first test shard with row `row`'s feature ids replaced (a variable-length list column)."""
    src = sorted((data_dir / "test").glob("*.parquet"))[0]
    t = pq.read_table(src, columns=["feature_ids", "label", "row_id"])
    fids = t["feature_ids"].to_pylist()
    fids[row] = ids
    folder.mkdir(exist_ok=True)
    path = folder / "shard.parquet"
    pq.write_table(t.set_column(0, "feature_ids", pa.array(fids, pa.list_(pa.int64()))), path)
    return path


def test_bad_rows_are_named(served, data_dir, tmp_path):
    num_features = json.loads((served / "serving.json").read_text())["num_features"]
    short = _bad_shard(data_dir, tmp_path / "short", 3, [2, 3, 4, 5, 6, 7, 8])
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"earlier output")
    with pytest.raises(FlipDataError, match=rf"{short}: line 3: has 7 feature ids, the model takes 8 \(user_id,"):
        score(served, short, out, batch_size=2)                   # row 3 lies in the second batch
    assert out.read_bytes() == b"earlier output"                  # not replaced by a partial file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    row = pq.read_table(short)["feature_ids"][0].as_py()
    big = _bad_shard(data_dir, tmp_path / "big", 1500, row[:5] + [num_features] + row[6:])
    with pytest.raises(FlipDataError, match=rf"{big}: line 1500: feature id {num_features} \(field movie_id\) "
                                            rf"is outside the model's \[0, {num_features}\)"):
        score(served, big, None)

    damaged = tmp_path / "damaged"
    shutil.copytree(served, damaged)
    blob = bytearray((damaged / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (damaged / "model.pt").write_bytes(bytes(blob))
    with pytest.raises(FlipDataError, match="does not match the SHA-256 in serving.json"):
        score(damaged, data_dir, None)


def test_scoring_imports_no_plm_ray_or_model_code(served, data_dir, flip_id):
    code = f"""
import json, sys
import argparse
from flip_dist.serving.score import score
from flip_dist.serving.commands import add_commands
r = score({str(served)!r}, {str(data_dir)!r}, None)
p = argparse.ArgumentParser(); add_commands(p.add_subparsers(dest="command"))
a = p.parse_args(["score", "--model", {str(served)!r}, "--data", {str(data_dir)!r}])
a.func(a)
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in {HEAVY!r}))
print(json.dumps({{"heavy": heavy, "auc": r["auc"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["heavy"] == []
    assert last["auc"] == pytest.approx(flip_id[1]["auc"], abs=1e-6)


def test_cli_round_trip(flip_id, data_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="flip-dist")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export-id", "--export", str(flip_id[0]), "--out", str(tmp_path / "served")])
    assert args.func(args) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["model"] == str(tmp_path / "served" / "model.pt") and exported["num_fields"] == 8
    args = parser.parse_args(["score", "--model", exported["out"], "--data", str(data_dir), "--split", "test",
                              "--out", str(tmp_path / "s.parquet"), "--batch-size", "777"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 7286 and summary["out"] == str(tmp_path / "s.parquet")
    assert summary["auc"] == pytest.approx(flip_id[1]["auc"], abs=1e-6)
    assert summary["logloss"] == pytest.approx(flip_id[1]["logloss"], abs=1e-6)
    assert pq.ParquetFile(tmp_path / "s.parquet").metadata.num_rows == 7286
    # Exporting again replaces the earlier serving folder; a folder of someone else's files is refused.
    again = parser.parse_args(["export-id", "--export", str(flip_id[0]), "--out", exported["out"]])
    assert again.func(again) == 0      # (not byte-identical: TorchScript mangles names per process)
    from flip_dist.io_atomic import sha256_file
    assert json.loads(capsys.readouterr().out)["sha256"] == sha256_file(tmp_path / "served" / "model.pt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        export_id(flip_id[0], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["dcnv2", "deepfm", "autoint", "afm", "pnn", "widedeep", "dcn", "xdeepfm", "afn"])
def test_every_id_model_compiles_to_the_finetuning_forward(name):
    """The artifact is a trace: check at batch sizes other than the traced one, for every ID model."""
    from flip_dist.models.id_models import build_id_model
    from flip_dist.serving.export_id import IdScorer, _compile, _verify

    torch.manual_seed(0)
    fields = [f"f{i}" for i in range(5)]
    table = torch.randn(40, 8) * 0.3
    id_model = build_id_model(name, len(fields), 8).eval()
    artifact, method = _compile(IdScorer(table, id_model).eval(), torch.zeros(2, len(fields), dtype=torch.long))
    assert method in ("script", "trace")
    _verify(artifact, table, id_model, fields, name)          # raises when the logits differ
    logits = artifact(torch.randint(0, 40, (9, len(fields))))
    assert logits.shape == (9,) and logits.std() > 0


def test_export_after_deepspeed_replaced_torch_linear(flip_id, tmp_path, monkeypatch):
    """A ZeRO-3 engine built earlier in the process leaves F.linear replaced by DeepSpeed's Python
    autograd Function (it says so: "this will persist"); the export still compiles torch's own."""
    import torch.nn.functional as F
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    monkeypatch.setattr(F, "linear", zero3_linear_wrap)
    out = export_id(flip_id[0], tmp_path / "served")
    assert (out / "serving.json").is_file() and F.linear is zero3_linear_wrap      # put back as it was

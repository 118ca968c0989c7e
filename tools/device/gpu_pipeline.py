#!/usr/bin/env python
"""The GPU check, for a one-GPU machine without Ray (Ray's wheel is over the device tool's carry
limit): the distributed worker loop itself (flip_dist.distributed.worker.worker_loop) as a 1-rank nccl
job, pretrain -> finetune -> evaluate on real ML-100K shards under DeepSpeed ZeRO-2 bf16, then
pretraining throughput with RoBERTa-Large (random weights). Tables are replicated plain torch
EmbeddingBags (dist.sharding=none): the carried fbgemm is the CPU build, whose kernels TorchRec's
sharded CUDA tables would need. Prints samples/s and peak GPU memory per run; writes JSON.

    source tools/device/install_wheels.sh && python3 tools/device/gpu_pipeline.py \
        --minilm-data data/processed/ml-100k --roberta-data runs/bench_zero/ml100k-roberta --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1",
             "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)

from flip_dist.config import load_config  # noqa: E402
from flip_dist.distributed.metrics_log import read_metrics  # noqa: E402
from flip_dist.distributed.worker import WorkerArgs, worker_loop  # noqa: E402

COMMON = ["dist.use_gpu=true", "dist.num_workers=1", "dist.sharding=none", "pretrain.table_optimizer=adam",
          "finetune.table_optimizer=adam", "dist.data=exact", "dist.log_every=10", "dist.checkpoint_every=0"]


def stage(name: str, data: str, run_dir: Path, sets: list[str]) -> dict:
    cfg = load_config(None, COMMON + sets + [f"pretrain.out_dir={run_dir}", f"finetune.out_dir={run_dir}"])
    t0 = time.perf_counter()
    worker_loop(WorkerArgs(cfg.to_dict(), name, data, str(run_dir)).to_dict())
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["stage"] == name and name != "evaluate"]
    evaluation = [r for r in rows if r["stage"] == "evaluate"]
    return {"stage": name, "wall_s": round(time.perf_counter() - t0, 1), "last": train[-1] if train else {},
            "evaluation": evaluation[-1] if evaluation else None, "train_rows": train}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm-data", required=True)
    ap.add_argument("--roberta-data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cpu", action="store_true", help="a dry run of the same path on CPU (gloo), before the GPU")
    args = ap.parse_args()
    out = Path(args.out)
    if args.cpu:
        COMMON[:] = [c for c in COMMON if not c.startswith(("dist.use_gpu", "pretrain.table_optimizer",
                                                                 "finetune.table_optimizer"))] + \
            ["dist.use_gpu=false", "pretrain.table_optimizer=adagrad", "finetune.table_optimizer=adagrad",
             "model.plm_layers=1"]
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    results = []
    small = ["model.plm=tinybert", "dist.ds_config=zero2_bf16"]
    pre = stage("pretrain", args.minilm_data, out / "pretrain",
                small + ["pretrain.batch_size=256", f"pretrain.max_steps={args.steps}"])
    results.append(pre)
    ft = stage("finetune", args.minilm_data, out / "finetune",
               small + ["finetune.batch_size=256", f"finetune.max_steps={args.steps}",
                        f"finetune.init={out / 'pretrain' / 'export'}"])
    results.append(ft)
    ev = stage("evaluate", args.minilm_data, out / "evaluate",
               small + [f"finetune.init={out / 'finetune' / 'export'}"])
    results.append(ev)
    if args.roberta_data:
        for ds in ("zero2_bf16", "zero3_bf16"):
            r = stage("pretrain", args.roberta_data, out / f"roberta-large-{ds}",
                      ["model.plm=roberta-large", f"dist.ds_config={ds}", "pretrain.batch_size=64",
                       f"pretrain.max_steps={max(2, args.steps // 5)}"])
            r["stage"] = f"pretrain roberta-large {ds}"
            results.append(r)
    for r in results:
        last, ev = r["last"], r["evaluation"]
        print(f"{r['stage']:<34} wall {r['wall_s']:7.1f} s  "
              f"train samples/s {last.get('samples_per_s', float('nan')):9.1f}  "
              f"peak GPU GiB {last.get('peak_gpu_gib_by_rank')}  "
              f"last loss {last.get('total', last.get('loss', float('nan'))):.4f}"
              + (f"  test AUC {ev['auc']:.4f} logloss {ev['logloss']:.4f} ({ev['count']} rows)" if ev else ""),
              flush=True)
    (out / "gpu_pipeline.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

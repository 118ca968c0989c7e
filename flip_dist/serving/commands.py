"""`flip-dist export-id` and `flip-dist score`: serving a FLIP_ID model without the PLM.
Registered by flip_dist.cli through add_commands; the library is imported only when a command
runs, so `score` stays free of the training stack."""
from __future__ import annotations

import argparse
import json


def cmd_export_id(args: argparse.Namespace) -> int:
    from flip_dist.serving.export_id import export_id

    out = export_id(args.export, args.out, data=args.data)
    info = json.loads((out / "serving.json").read_text(encoding="utf-8"))
    keys = ("id_model", "dataset", "num_fields", "num_features", "compiled_with", "sha256", "source_export")
    print(json.dumps({"out": str(out), "model": str(out / info["model_file"])} | {k: info[k] for k in keys},
                     indent=2))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from flip_dist.serving.score import score

    result = score(args.model, args.data, args.out, split=args.split, batch_size=args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `export-id` and `score` to the flip-dist subcommands."""
    exp = sub.add_parser("export-id", help="a finetune.mode=flip_id export -> one TorchScript file (feature ids -> "
                                           "logits) that serves without the PLM")
    exp.add_argument("--export", required=True, help="finetuning export folder (its meta.json says flip_id)")
    exp.add_argument("--out", required=True, help="output folder: model.pt + serving.json (replaces only an "
                                                  "earlier export-id folder)")
    exp.add_argument("--data", help="the processed dataset it was trained on (default: the path in its meta.json)")
    exp.set_defaults(func=cmd_export_id)

    sc = sub.add_parser("score", help="score Parquet rows with an export-id model (torch + pyarrow only); "
                                      "AUC / logloss where they have labels")
    sc.add_argument("--model", required=True, help="export-id folder, or its model.pt")
    sc.add_argument("--data", required=True, help="processed dataset folder (its --split), a folder of shards "
                                                  "or one .parquet shard")
    sc.add_argument("--split", default="test", help="split of a processed dataset (default: test)")
    sc.add_argument("--out", help="Parquet file for row_id, prob (and label), written atomically")
    sc.add_argument("--batch-size", dest="batch_size", type=int, default=4096)
    sc.set_defaults(func=cmd_score)

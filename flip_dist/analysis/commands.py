"""`flip-dist analyze`: the paper's RQ5 and RQ6 analyses of pretraining exports, to JSON and PNGs.

    flip-dist analyze --config C [--preset P] --data D --pretrained full=EXPORT \
        [--pretrained no_mlm_mtm=EXPORT ...] --out DIR [--rows N] [--set k=v]

RQ5 (field-level alignment, Fig. 9) compares the variant named `full` (else the first given)
with the model that variant's run started from; RQ6 (embedding collapse, Fig. 2 / 8) covers every
variant given. Heavy imports wait for the command itself: building the parser stays cheap."""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flip_dist.errors import FlipConfigError

OUTPUTS = ("field_similarity.json", "field_similarity.png", "embedding_spectrum.json", "embedding_scatter.png",
           "singular_values.png")
BEFORE = "before pretraining"


def parse_exports(items: Sequence[str]) -> dict[str, str]:
    """['full=runs/a', 'icl=runs/b'] -> {'full': 'runs/a', 'icl': 'runs/b'}; names unique, folders real."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        name, folder = name.strip(), folder.strip()
        if not sep or not name or not folder:
            raise FlipConfigError(f"--pretrained {item!r}: expected NAME=EXPORT_FOLDER, e.g. full=runs/pretrain")
        if name in out:
            raise FlipConfigError(f"--pretrained: the name {name!r} is given twice")
        if not Path(folder).is_dir():
            raise FlipConfigError(f"--pretrained {item!r}: {folder} is not a folder")
        out[name] = folder
    if not out:
        raise FlipConfigError("--pretrained: give at least one NAME=EXPORT_FOLDER")
    return out


def run_analyses(cfg: Any, data_dir: str | Path, exports: Mapping[str, str | Path], out_dir: str | Path,
                 rows: int = 256, seed: int = 0, top: int = 10) -> dict[str, Any]:
    """RQ5 before/after pretraining for `full` (else the first export) and RQ6 over all `exports`
    (name -> pretraining export folder); writes OUTPUTS into `out_dir`, each atomically, and
    returns a short summary (gaps, collapse figures, file paths)."""
    from flip_dist.analysis.embedding_spectrum import embedding_spectrum, plot_embedding_scatter, plot_singular_values
    from flip_dist.analysis.field_alignment import analysis_config, field_similarity, plot_field_similarity
    from flip_dist.io_atomic import write_json_atomic

    if not exports:
        raise FlipConfigError("no pretraining exports to analyse")
    out = Path(out_dir)
    main = "full" if "full" in exports else next(iter(exports))
    start = analysis_config(cfg, exports[main])       # the model the `main` run started from
    start.pretrain.init = None
    rq5 = {BEFORE: field_similarity(start, data_dir, None, rows, seed),
           f"after pretraining ({main})": field_similarity(cfg, data_dir, exports[main], rows, seed)}
    write_json_atomic(out / "field_similarity.json", {"variant": main, "export": str(exports[main]), "results": rq5})
    plot_field_similarity(rq5, out / "field_similarity.png")

    spectrum = embedding_spectrum(exports, top=top, data_dir=data_dir)
    write_json_atomic(out / "embedding_spectrum.json", {"top": top, "variants": spectrum})
    plot_embedding_scatter(exports, out / "embedding_scatter.png", data_dir=data_dir)
    plot_singular_values(spectrum, out / "singular_values.png")
    return {
        "out": str(out),
        "field_similarity": {"variant": main,
                             **{name: {k: r[k] for k in ("gap", "diagonal_is_row_max")} for name, r in rq5.items()}},
        "embedding_spectrum": {name: {k: s[k] for k in ("top1_share", "top_k_share", "effective_rank")}
                               for name, s in spectrum.items()},
        "files": [str(out / f) for f in OUTPUTS],
    }


def cmd_analyze(args: argparse.Namespace) -> int:
    from flip_dist.config import load_config

    cfg = load_config(args.config, list(args.set), preset=args.preset)
    exports = parse_exports(args.pretrained)
    summary = run_analyses(cfg, args.data or cfg.preprocess.out_dir, exports, args.out, rows=args.rows,
                           seed=args.seed, top=args.top)
    print(json.dumps(summary, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `analyze` on the `flip-dist` subcommands."""
    p = sub.add_parser("analyze", help="the paper's RQ5 (field-level alignment heat map, Fig. 9) and RQ6 (SVD of "
                                       "the feature embeddings, Fig. 2 / 8) for pretraining exports; JSON and PNGs")
    p.add_argument("--config", help="YAML experiment file")
    p.add_argument("--preset", metavar="NAME",
                   help="a named preset of the config file, layered on its base (default: its default_preset)")
    p.add_argument("--data", help="processed dataset folder the exports were pretrained on "
                                  "(default: the config's preprocess.out_dir)")
    p.add_argument("--pretrained", action="append", default=[], metavar="NAME=EXPORT", required=True,
                   help="a pretraining export and its name, e.g. full=runs/pretrain; repeat for more variants "
                        "(RQ5 uses 'full', else the first; RQ6 all)")
    p.add_argument("--out", required=True, help="folder for " + ", ".join(OUTPUTS))
    p.add_argument("--rows", type=int, default=256, help="test rows sampled for RQ5 (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the RQ5 row sample (default 0)")
    p.add_argument("--top", type=int, default=10, help="RQ6: the share of the top-N singular values (default 10)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set preprocess.out_dir=DIR (the model of an export is "
                        "rebuilt from the export's own config: its model section, objectives and seed)")
    p.set_defaults(func=cmd_analyze)

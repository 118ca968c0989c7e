"""DeepSpeed config presets (ds_configs/*.json) and the one loader that fills in the runtime's values.

The JSON files hold only what is a choice (ZeRO stage, bucket sizes, offload, bf16). Batch sizes,
clipping and logging come from the experiment config here, so the two can never disagree silently:
a file that sets one of them to another value fails with a FlipConfigError naming the key.

The presets live once, in the repository's top-level ds_configs/ folder; pyproject.toml installs
that folder as the package `flip_dist.ds_configs` (package-dir mapping), so a wheel carries them
and an editable install maps the package back to the folder."""
from __future__ import annotations

import copy
import importlib.resources
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from flip_dist.errors import FlipConfigError

PRESET_PACKAGE = "flip_dist.ds_configs"


def _preset_dir() -> Path:
    """The folder of the preset JSON files: the installed package `flip_dist.ds_configs` (wheel or
    editable install); without it (the source tree on PYTHONPATH, never installed) the repository's
    ds_configs/ beside flip_dist/. Presets are read as files, so a zip import finds none."""
    try:
        found = importlib.resources.files(PRESET_PACKAGE)
    except ModuleNotFoundError:
        found = None
    if isinstance(found, Path) and found.is_dir():
        return found.resolve()
    return Path(__file__).resolve().parents[2] / "ds_configs"


DS_CONFIG_DIR: Path = _preset_dir()
PRECISIONS = ("fp32", "bf16")
ZERO_STAGES = (0, 1, 2, 3)
_FP16_NAMES = ("torch.float16", "fp16", "float16", "half")
STEPS_PER_PRINT = 1 << 30   # DeepSpeed's own step log is noise next to the runtime's metrics

_FP16_WHY = ("fp16 is refused: its dynamic loss scaling would also scale the gradients that reach "
             "the TorchRec embedding tables' fused (in-backward) optimizer, which never unscales "
             "them. Use bf16 (precision='bf16' or a *_bf16 preset).")


def ds_config_names() -> list[str]:
    """The preset names (file stems in DS_CONFIG_DIR), sorted."""
    return sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))


def zero_stage(cfg: dict) -> int:
    """The ZeRO stage of a DeepSpeed config (0 when it has no zero_optimization section)."""
    zero = cfg.get("zero_optimization", {})
    if zero is None:
        return 0
    if not isinstance(zero, dict):
        raise FlipConfigError(f"deepspeed config key 'zero_optimization': expected an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in ZERO_STAGES:
        raise FlipConfigError(f"deepspeed config key 'zero_optimization.stage': must be one of "
                              f"{list(ZERO_STAGES)}, not {stage!r}")
    return stage


def load_ds_config(name_or_path: str, *, micro_batch: int, world_size: int, grad_accum: int = 1,
                   grad_clip: float = 0.0, precision: str | None = None) -> dict:
    """A new DeepSpeed config dict from a preset name or a JSON file, with the runtime's values filled in.

    precision None keeps the file's choice; 'fp32' / 'bf16' override it. fp16 is always refused."""
    for key, value in (("micro_batch", micro_batch), ("world_size", world_size), ("grad_accum", grad_accum)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FlipConfigError(f"deepspeed {key}: must be an integer >= 1, not {value!r}")
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or not grad_clip >= 0:
        raise FlipConfigError(f"deepspeed grad_clip: must be a number >= 0 (0 = off), not {grad_clip!r}")
    if precision is not None and precision not in PRECISIONS:
        raise FlipConfigError(f"deepspeed precision: must be one of {list(PRECISIONS)} or None, not {precision!r}"
                              + (f". {_FP16_WHY}" if precision == "fp16" else ""))

    path = _resolve(name_or_path)
    cfg = copy.deepcopy(_read(str(path), path.stat().st_mtime_ns))   # the cache stays untouched
    where = f"deepspeed config {path}"

    for section in ("optimizer", "scheduler"):
        if section in cfg:
            raise FlipConfigError(f"{where}: key {section!r} is not allowed: the runtime passes its own "
                                  f"torch optimizer and LR schedule, and DeepSpeed would silently ignore it")
    if "bfloat16" in cfg:   # DeepSpeed's old spelling of the bf16 section
        if "bf16" in cfg:
            raise FlipConfigError(f"{where}: keys 'bf16' and 'bfloat16' are both set; keep 'bf16'")
        cfg["bf16"] = cfg.pop("bfloat16")
    if _enabled(cfg.get("fp16"), where, "fp16"):
        raise FlipConfigError(f"{where}: key 'fp16.enabled' is true. {_FP16_WHY}")
    if (_enabled(cfg.get("torch_autocast"), where, "torch_autocast")
            and str(cfg["torch_autocast"].get("dtype", "")).lower() in _FP16_NAMES):
        raise FlipConfigError(f"{where}: key 'torch_autocast.dtype' is float16. {_FP16_WHY}")
    _enabled(cfg.get("bf16"), where, "bf16")   # type check only
    try:
        zero_stage(cfg)
    except FlipConfigError as e:
        raise FlipConfigError(f"{where}: {e}") from None

    runtime: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        # DeepSpeed clips only the dense engine's parameters. The runtime clips nothing else on
        # purpose: the TorchRec embedding tables step inside backward with their own fused
        # optimizer, before any global norm could be known.
        "gradient_clipping": float(grad_clip),
    }
    for key, value in runtime.items():
        if key in cfg and cfg[key] != value:
            raise FlipConfigError(f"{where}: key {key!r} is {cfg[key]!r} but the runtime uses {value!r} "
                                  f"(micro_batch={micro_batch}, grad_accum={grad_accum}, "
                                  f"world_size={world_size}, grad_clip={grad_clip}); remove it from the file")
        cfg[key] = value
    cfg["steps_per_print"] = STEPS_PER_PRINT
    cfg["wall_clock_breakdown"] = False

    if precision is not None:
        bf16 = dict(cfg.get("bf16") or {})
        bf16["enabled"] = precision == "bf16"
        cfg["bf16"] = bf16
        if precision == "fp32" and isinstance(cfg.get("torch_autocast"), dict):
            cfg["torch_autocast"] = {**cfg["torch_autocast"], "enabled": False}
    return cfg


def _resolve(name_or_path: str) -> Path:
    """A preset name maps to DS_CONFIG_DIR/<name>.json; anything with a separator or .json is a path."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path):
        raise FlipConfigError(f"deepspeed config: expected a preset name or a JSON path, not {name_or_path!r}")
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.endswith(".json"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FlipConfigError(f"deepspeed config {path}: no such file")
        return path.resolve()
    path = DS_CONFIG_DIR / f"{text}.json"
    if not path.is_file():
        raise FlipConfigError(f"deepspeed config {text!r}: not a preset (presets in {DS_CONFIG_DIR}: "
                              f"{', '.join(ds_config_names()) or 'none'}) and not a path to a .json file")
    return path


@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int) -> dict:
    """Parsed JSON, cached per file version (mtime in the key); callers must deep-copy."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise FlipConfigError(f"deepspeed config {path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise FlipConfigError(f"deepspeed config {path}: invalid JSON at line {e.lineno} column {e.colno}: "
                              f"{e.msg}") from None
    if not isinstance(data, dict):
        raise FlipConfigError(f"deepspeed config {path}: expected a JSON object at the top level, "
                              f"got {type(data).__name__}")
    return data


def _enabled(section: Any, where: str, key: str) -> bool:
    """Whether a precision section ('fp16', 'bf16', 'torch_autocast') is on; a non-object fails naming the key."""
    if section is None:
        return False
    if not isinstance(section, dict):
        raise FlipConfigError(f"{where}: key {key!r}: expected an object like {{\"enabled\": true}}, "
                              f"got {section!r}")
    value = section.get("enabled", False)
    if not isinstance(value, bool):
        raise FlipConfigError(f"{where}: key '{key}.enabled': expected true/false, got {value!r}")
    return value

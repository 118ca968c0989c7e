"""DeepSpeed presets: each loads, and DeepSpeed 0.19.8 on CPU really trains with it (one process,
gloo, world size 1); the loader's refusals name the value or key at fault."""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ["DS_ACCELERATOR"] = "cpu"     # before deepspeed is imported anywhere in this process
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

import torch

from flip_dist.distributed.ds_config import (
    DS_CONFIG_DIR,
    ds_config_names,
    load_ds_config,
    zero_stage,
)
from flip_dist.errors import FlipConfigError

PRESETS = ["zero1", "zero1_bf16", "zero2", "zero2_bf16", "zero3", "zero3_bf16", "zero3_offload"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ds_single_process():
    """One gloo process group of world size 1, adopted by DeepSpeed; torn down after the module."""
    import torch.distributed as dist

    with pytest.MonkeyPatch.context() as mp:
        # deepspeed.initialize asserts LOCAL_RANK is set, even when it adopts an existing group.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
            mp.setenv(key, value)
        import deepspeed

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        try:
            deepspeed.init_distributed(dist_backend="gloo")
            yield deepspeed
        finally:
            dist.destroy_process_group()


def test_presets_present():
    assert set(PRESETS) <= set(ds_config_names())
    assert DS_CONFIG_DIR == REPO / "ds_configs"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads(name):
    cfg = load_ds_config(name, micro_batch=4, world_size=2, grad_accum=3, grad_clip=0.5)
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 24
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["wall_clock_breakdown"] is False and cfg["steps_per_print"] >= 1 << 20
    assert zero_stage(cfg) == int(name[4])
    assert cfg.get("bf16", {}).get("enabled", False) == name.endswith("_bf16")
    assert not cfg.get("fp16", {}).get("enabled", False)
    assert "optimizer" not in cfg and "scheduler" not in cfg
    if name == "zero3_offload":
        zero = cfg["zero_optimization"]
        assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
        assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}


@pytest.mark.parametrize("name", PRESETS)
def test_deepspeed_trains_with_preset(ds_single_process, name):
    deepspeed = ds_single_process
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    before = [p.detach().clone() for p in model.parameters()]
    cfg = load_ds_config(name, micro_batch=4, world_size=1, grad_clip=1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, config=cfg,
                                           optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2))
    assert engine.zero_optimization_stage() == zero_stage(cfg)
    assert engine.bfloat16_enabled() == name.endswith("_bf16")
    dtype = torch.bfloat16 if name.endswith("_bf16") else torch.float32
    losses = []
    for _ in range(2):
        x = torch.randn(4, 8, dtype=dtype)
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):   # ZeRO-3 keeps only shards outside forward
        after = [p.detach().float().clone() for p in params]
    assert [a.shape for a in after] == [b.shape for b in before]
    assert any(not torch.allclose(a, b.float()) for a, b in zip(after, before, strict=True))
    engine.destroy()


def test_unknown_name_lists_presets():
    with pytest.raises(FlipConfigError) as e:
        load_ds_config("zero9", micro_batch=4, world_size=1)
    msg = str(e.value)
    assert "'zero9'" in msg and "zero1" in msg and "zero3_offload" in msg


def test_missing_and_invalid_files_named(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FlipConfigError, match="nope.json"):
        load_ds_config(str(missing), micro_batch=4, world_size=1)
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 1,}}')
    with pytest.raises(FlipConfigError, match=r"bad\.json.*invalid JSON"):
        load_ds_config(str(bad), micro_batch=4, world_size=1)
    top = tmp_path / "list.json"
    top.write_text("[1, 2]")
    with pytest.raises(FlipConfigError, match=r"list\.json.*JSON object"):
        load_ds_config(str(top), micro_batch=4, world_size=1)


def _write(tmp_path: Path, cfg: dict, name: str = "custom.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return str(path)


def test_fp16_refused(tmp_path):
    path = _write(tmp_path, {"fp16": {"enabled": True}, "zero_optimization": {"stage": 1}})
    with pytest.raises(FlipConfigError, match=r"fp16.*bf16") as e:
        load_ds_config(path, micro_batch=4, world_size=1)
    assert "fused" in str(e.value)
    # an explicit precision does not hide it, and 'fp16' is no precision choice
    with pytest.raises(FlipConfigError, match="fp16"):
        load_ds_config(path, micro_batch=4, world_size=1, precision="bf16")
    with pytest.raises(FlipConfigError, match="fp16"):
        load_ds_config("zero1", micro_batch=4, world_size=1, precision="fp16")
    auto = _write(tmp_path, {"torch_autocast": {"enabled": True, "dtype": "float16"}}, "autocast.json")
    with pytest.raises(FlipConfigError, match="torch_autocast"):
        load_ds_config(auto, micro_batch=4, world_size=1)
    # disabled fp16 sections are fine
    ok = _write(tmp_path, {"fp16": {"enabled": False}}, "off.json")
    assert load_ds_config(ok, micro_batch=4, world_size=1)["fp16"] == {"enabled": False}


@pytest.mark.parametrize("key,value", [("train_batch_size", 32), ("train_micro_batch_size_per_gpu", 8),
                                       ("gradient_accumulation_steps", 2), ("gradient_clipping", 5.0)])
def test_runtime_value_mismatch_names_key(tmp_path, key, value):
    path = _write(tmp_path, {key: value, "zero_optimization": {"stage": 2}})
    with pytest.raises(FlipConfigError, match=key):
        load_ds_config(path, micro_batch=4, world_size=2, grad_accum=1, grad_clip=1.0)


def test_matching_runtime_values_are_kept(tmp_path):
    path = _write(tmp_path, {"train_batch_size": 16, "gradient_accumulation_steps": 2})
    cfg = load_ds_config(path, micro_batch=4, world_size=2, grad_accum=2)
    assert cfg["train_batch_size"] == 16 and zero_stage(cfg) == 0


def test_precision_override_and_no_mutation():
    fp32 = load_ds_config("zero2_bf16", micro_batch=4, world_size=1, precision="fp32")
    assert fp32["bf16"]["enabled"] is False
    fp32["zero_optimization"]["stage"] = 3          # must not leak into the cached preset
    again = load_ds_config("zero2_bf16", micro_batch=4, world_size=1)
    assert again["bf16"]["enabled"] is True and zero_stage(again) == 2
    bf16 = load_ds_config("zero2", micro_batch=4, world_size=1, precision="bf16")
    assert bf16["bf16"]["enabled"] is True
    with pytest.raises(FlipConfigError, match="precision"):
        load_ds_config("zero2", micro_batch=4, world_size=1, precision="fp8")


@pytest.mark.parametrize("stage", [4, -1, "2", True, None])
def test_bad_zero_stage(tmp_path, stage):
    path = _write(tmp_path, {"zero_optimization": {"stage": stage}})
    with pytest.raises(FlipConfigError, match="zero_optimization.stage"):
        load_ds_config(path, micro_batch=4, world_size=1)


def test_optimizer_section_refused(tmp_path):
    path = _write(tmp_path, {"optimizer": {"type": "Adam", "params": {"lr": 1e-3}}})
    with pytest.raises(FlipConfigError, match="optimizer"):
        load_ds_config(path, micro_batch=4, world_size=1)


@pytest.mark.parametrize("kwargs", [{"micro_batch": 0}, {"world_size": 0}, {"grad_accum": 0},
                                    {"grad_clip": -1.0}, {"micro_batch": 2.5}])
def test_bad_runtime_values(kwargs):
    args = {"micro_batch": 4, "world_size": 1, **kwargs}
    with pytest.raises(FlipConfigError):
        load_ds_config("zero1", **args)


# ---------------------------------------------------------------- presets as package data

def test_presets_are_the_installed_package_flip_dist_ds_configs():
    """pyproject.toml maps the package flip_dist.ds_configs to the top-level ds_configs/ folder;
    the editable install resolves it there, a wheel carries the JSON files inside flip_dist/."""
    import importlib.resources

    found = importlib.resources.files("flip_dist.ds_configs")
    assert Path(str(found)).resolve() == REPO / "ds_configs" == DS_CONFIG_DIR
    assert {p.name[:-5] for p in found.iterdir() if p.name.endswith(".json")} == set(PRESETS)


def test_presets_fall_back_to_the_source_tree_when_the_package_is_missing(monkeypatch):
    """The source tree on PYTHONPATH, never installed: no flip_dist.ds_configs to import."""
    import importlib.resources

    from flip_dist.distributed import ds_config

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", missing)
    assert ds_config._preset_dir() == REPO / "ds_configs"


def test_a_json_path_outside_the_presets_still_loads(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 2}}, "zero1.json")   # a preset's name, elsewhere
    cfg = load_ds_config(path, micro_batch=2, world_size=1)
    assert zero_stage(cfg) == 2


def test_pyproject_lists_every_package_and_ships_the_presets():
    """setuptools takes either `packages.find` or a list, and the mapped flip_dist.ds_configs needs
    the list: a package added under flip_dist/ but not to pyproject.toml would be missing from
    the wheel, so this fails until it is listed."""
    tomllib = pytest.importorskip("tomllib")    # Python >= 3.11
    st = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "flip_dist").rglob("__init__.py")}
    assert set(st["packages"]) == on_disk | {"flip_dist.ds_configs"}
    assert st["package-dir"] == {"flip_dist.ds_configs": "ds_configs"}
    assert st["package-data"]["flip_dist.ds_configs"] == ["*.json"]
    assert (REPO / "ds_configs" / "__init__.py").is_file()

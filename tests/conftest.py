"""Shared fixtures: one local Ray for the session (its files under the repo's .cache), real
MovieLens-100K fetched once into data/raw (git-ignored), processed once per session."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("FLIP_DIST_CACHE", str(REPO / ".cache" / "flip_dist"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def _ray_temp_dir() -> str:
    """Ray's unix sockets live under its temp dir and must stay under ~107 bytes."""
    preferred = REPO / ".cache" / "ray"
    if len(str(preferred)) <= 40:
        preferred.mkdir(parents=True, exist_ok=True)
        return str(preferred)
    return tempfile.mkdtemp(prefix="flipray")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from flip_dist.config import RayConfig
    from flip_dist.ray_runtime import ray_session

    with ray_session(RayConfig(num_cpus=2, temp_dir=_ray_temp_dir())):
        yield ray
    assert not ray.is_initialized()


@pytest.fixture(scope="session")
def ml100k_raw() -> Path:
    from flip_dist.data.fetch import fetch

    return fetch("ml-100k", REPO / "data" / "raw" / "ml-100k", timeout=3)


@pytest.fixture(scope="session")
def ml100k_processed(ml100k_raw, ray_local, tmp_path_factory) -> Path:
    from flip_dist.config import PreprocessConfig
    from flip_dist.data.preprocess import preprocess

    out = tmp_path_factory.mktemp("processed") / "ml-100k"
    preprocess(PreprocessConfig(dataset="ml-100k", raw_dir=str(ml100k_raw), out_dir=str(out),
                                max_length=128, num_workers=2))
    return out


@pytest.fixture(scope="session")
def ml100k_staging(ml100k_raw):
    """The real ML-100K parsed into one staging table (no Ray)."""
    from flip_dist.data.readers import get_reader

    reader = get_reader("ml-100k")
    part = reader.parts(ml100k_raw, 1 << 30)[0]
    return reader, reader.read_part(part, reader.context(ml100k_raw), seed=42)


@pytest.fixture(scope="session")
def minilm():
    from flip_dist.text_assets import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture(scope="session")
def roberta_bpe():
    from flip_dist.text_assets import load_tokenizer

    return load_tokenizer("roberta-bpe")


def copy_raw(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

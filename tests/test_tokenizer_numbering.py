"""Real RoBERTa checkpoints number tokens in fairseq's order ("Ġthe" is 5), the bundled
'roberta-bpe' as GPT-2 + 4: training refuses shards of another numbering, naming the command to
rerun, and preprocessing picks the tokenizer beside model.plm_path. A tiny RoBERTa-shaped folder
with a permuted vocabulary stands in for a real checkpoint (random weights, no hub)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from flip_dist.config import load_config
from flip_dist.data.manifest import MANIFEST, read_manifest
from flip_dist.data.shards import shard_files
from flip_dist.data.synthetic_shards import write_synthetic_shards
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.text_assets import ROBERTA_BPE, fingerprint_of, load_tokenizer, tokenizer_fingerprint
from flip_dist.train.encoders import build_encoders, check_text_matches, preprocess_config, preprocess_tokenizer

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


@pytest.fixture(scope="module")
def roberta_folder(tmp_path_factory):
    """A RoBERTa-shaped PLM folder: roberta-bpe's tokens in another order (specials and <mask> in
    place, "Ġthe" at 5 as in fairseq's dictionary), and a 2-layer RobertaModel of that vocabulary."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = load_tokenizer(ROBERTA_BPE)
    vocab = bpe.get_vocab()
    tokens = sorted((t for t in vocab if t not in (*SPECIALS, "<mask>")), key=vocab.__getitem__)
    tokens = [tokens[i] for i in np.random.default_rng(0).permutation(len(tokens))]
    tokens.remove("Ġthe")
    tokens.insert(1, "Ġthe")                       # id 4 + 1 = 5
    permuted = {t: i for i, t in enumerate(SPECIALS)} | {t: i + len(SPECIALS) for i, t in enumerate(tokens)}
    permuted["<mask>"] = len(permuted)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(bpe.backend_tokenizer.to_str())["model"]["merges"]]
    folder = tmp_path_factory.mktemp("plm") / "roberta-real"
    tok = RobertaTokenizerFast(vocab=permuted, merges=merges)
    tok.save_pretrained(folder)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def _shards(out, tokenizer: str):
    write_synthetic_shards(out, rows=200, features=3_000, tokenizer=tokenizer, max_length=64, rows_per_shard=200,
                           progress=False)
    return read_manifest(out)


def _cfg(folder, tokenizer: str = ROBERTA_BPE):
    return load_config(None, ["model.plm=roberta-base", f"model.plm_path={folder}", "model.plm_layers=1",
                              f"preprocess.tokenizer={tokenizer}"])


def test_the_two_numberings_give_other_ids(roberta_folder):
    bpe, real = load_tokenizer(ROBERTA_BPE), load_tokenizer(str(roberta_folder))
    assert (real.convert_tokens_to_ids("Ġthe"), bpe.convert_tokens_to_ids("Ġthe")) == (5, 266)
    assert len(real) == len(bpe) and (real.pad_token_id, real.mask_token_id) == (bpe.pad_token_id, bpe.mask_token_id)
    text = "user id is 7. the title is The Hobbit."
    assert real.tokenize(text) == bpe.tokenize(text)                 # the same tokens...
    assert real(text)["input_ids"] != bpe(text)["input_ids"]         # ...under other ids
    assert tokenizer_fingerprint(real) != tokenizer_fingerprint(bpe)
    assert fingerprint_of(ROBERTA_BPE) == tokenizer_fingerprint(bpe) == fingerprint_of(str(bpe.name_or_path))


def test_shards_of_another_numbering_are_refused_with_the_command(roberta_folder, tmp_path):
    manifest = _shards(tmp_path / "bpe", ROBERTA_BPE)
    cfg = _cfg(roberta_folder)
    for check in (lambda: check_text_matches(manifest, cfg.model), lambda: build_encoders(cfg, manifest)):
        with pytest.raises(FlipConfigError, match="tokenized with roberta-bpe") as e:
            check()
        assert f"flip-dist preprocess --config <your config> --set preprocess.tokenizer={roberta_folder}" \
               in str(e.value) and "preprocess.overwrite=true" in str(e.value)


def test_shards_of_the_plm_folders_tokenizer_pass(roberta_folder, tmp_path):
    real_manifest = _shards(tmp_path / "real", str(roberta_folder))
    bpe_manifest = _shards(tmp_path / "bpe", ROBERTA_BPE)
    cfg = _cfg(roberta_folder)
    check_text_matches(real_manifest, cfg.model)
    enc = build_encoders(cfg, real_manifest)
    assert enc.info.tokenizer == str(roberta_folder) and enc.info.vocab_size == real_manifest.text_vocab_size
    # The first field's prompt, "<s>user id is", in both datasets' shards: same text, other ids.
    first = {name: pq.read_table(shard_files(tmp_path / name, "train")[0])["input_ids"][0].as_py()[:4]
             for name in ("real", "bpe")}
    real, bpe = load_tokenizer(str(roberta_folder)), load_tokenizer(ROBERTA_BPE)
    assert real.decode(first["real"]) == bpe.decode(first["bpe"]) == "<s>user id is"
    assert first["real"] != first["bpe"]
    assert real_manifest.tokenizer_fingerprint != bpe_manifest.tokenizer_fingerprint


def test_preprocessing_uses_the_plm_paths_tokenizer(roberta_folder, caplog):
    cfg = _cfg(roberta_folder)
    with caplog.at_level("INFO", logger="flip_dist.train.encoders"):
        assert preprocess_tokenizer(cfg) == str(roberta_folder)
    assert "preprocessing with its tokenizer" in caplog.text
    pre = preprocess_config(cfg)
    assert pre.tokenizer == str(roberta_folder) and cfg.preprocess.tokenizer == ROBERTA_BPE
    assert (pre.dataset, pre.out_dir, pre.max_length) == (cfg.preprocess.dataset, cfg.preprocess.out_dir,
                                                         cfg.preprocess.max_length)
    assert preprocess_tokenizer(_cfg(roberta_folder, str(roberta_folder))) == str(roberta_folder)
    # Without plm_path, the configured tokenizer, whichever it is.
    assert preprocess_tokenizer(load_config(None, [])) == "minilm"
    plain = load_config(None, ["model.plm=roberta-base", f"preprocess.tokenizer={ROBERTA_BPE}"])
    assert preprocess_tokenizer(plain) == ROBERTA_BPE and preprocess_config(plain) is plain.preprocess


def test_a_manifest_without_a_fingerprint_names_preprocessing(tmp_path):
    out = tmp_path / "old"
    _shards(out, "minilm")
    doc = json.loads((out / MANIFEST).read_text())
    del doc["tokenizer_fingerprint"]
    (out / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(FlipDataError, match=r"key 'tokenizer_fingerprint': manifest predates tokenizer "
                                            r"fingerprints.*flip-dist preprocess --config .* "
                                            r"--set preprocess.overwrite=true"):
        read_manifest(out)

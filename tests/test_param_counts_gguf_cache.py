"""Parameter counts by unique storage and the GGUF cache keyed by file hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config


def llama_param_formula(cfg, tied: bool) -> int:
    """Parameters of a bias-free llama, from its config alone."""
    h, i, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return v * h + n * layer + h + (0 if tied else v * h)


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def saved(request, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama", layers=3)
    cfg.tie_word_embeddings = request.param
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == request.param
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    from rank_helpers import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "m")
    return tmp_path / "m", cfg, request.param


def test_unit_param_counts_count_tied_embeddings_once(saved):
    from prunelens.model.info import unit_param_counts
    from prunelens.model.loading import load_model
    from prunelens.units import Unit

    path, cfg, tied = saved
    want_total = llama_param_formula(cfg, tied)
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    units = [Unit(0, "block"), Unit(1, "attn"), Unit(2, "mlp")]
    want_units = {"L0": 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h, "L1.attn": 2 * h * h + 2 * h * kv,
                  "L2.mlp": 3 * h * i}
    counts, total = unit_param_counts(str(path), units)  # from the config (meta model): no weights read
    assert total == want_total and counts == want_units
    counts, total = unit_param_counts(str(path), units, load_model(str(path)))  # from the loaded model
    assert total == want_total and counts == want_units


def test_unique_numel_counts_views_of_one_storage_once():
    from prunelens.model.parameter_counts import unique_numel

    w = torch.zeros(4, 5)
    assert unique_numel([w, w, w.view(4, 5)]) == 20
    assert unique_numel([w, w[:2]]) == 20 + 10  # a different view (shape) of the storage is another tensor
    assert unique_numel([w, torch.zeros(4, 5)]) == 40


# -- GGUF cache ----------------------------------------------------------------------------------
@pytest.fixture
def fake_convert(monkeypatch, tmp_path):
    """Replace the (slow) dequantisation by a stub that writes a checkpoint marker; count its calls."""
    import prunelens.model.loading as M

    monkeypatch.setenv("PRUNELENS_HOME", str(tmp_path / "home"))
    calls: list[Path] = []

    def convert(gguf: Path, dest: Path, info: dict) -> None:
        calls.append(gguf)
        dest.mkdir(parents=True)
        (dest / "model.safetensors").write_bytes(b"x")
        (dest / "config.json").write_text("{}")
        (dest / M._MARKER).write_text(json.dumps(info))

    monkeypatch.setattr(M, "_convert_gguf", convert)
    return calls


def test_gguf_is_converted_once_per_content_hash(fake_convert, tmp_path):
    import hashlib

    from prunelens.model.loading import resolve_spec, gguf_cache_dir

    a = tmp_path / "a.gguf"
    a.write_bytes(b"GGUF" + bytes(range(200)))
    # reading a config converts nothing: before conversion it reads the GGUF itself
    assert resolve_spec(str(a), weights=False) == (str(tmp_path), {"gguf_file": "a.gguf"}) and fake_convert == []
    first, extra = resolve_spec(str(a))
    assert extra == {} and len(fake_convert) == 1
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    assert Path(first) == gguf_cache_dir() / digest[:16]
    assert resolve_spec(str(a))[0] == first and len(fake_convert) == 1  # a second command: no conversion
    assert resolve_spec(str(a), weights=False) == (first, {})  # once converted, its config.json is read
    b = tmp_path / "copy" / "renamed.gguf"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    assert resolve_spec(str(b))[0] == first and len(fake_convert) == 1  # same bytes elsewhere: the same cache
    a.write_bytes(b"GGUF" + bytes(range(201)))  # the file changed: converted again, into a new entry
    assert resolve_spec(str(a))[0] != first and len(fake_convert) == 2


def test_models_list_shows_the_cached_gguf_location(fake_convert, tmp_path):
    from click.testing import CliRunner

    from prunelens.cli import main
    from prunelens.model.loading import resolve_spec

    g = tmp_path / "tiny.gguf"
    g.write_bytes(b"GGUF-tiny")
    path, _ = resolve_spec(str(g))
    res = CliRunner().invoke(main, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["path"]: r for r in json.loads(res.output)}
    assert rows[path]["alias"] == "tiny.gguf" and rows[path]["prepared"] is True
    assert str(g.resolve()) in rows[path]["description"]

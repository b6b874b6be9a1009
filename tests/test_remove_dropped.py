"""The slim loader: dropped sublayers physically removed, outputs and greedy generation unchanged."""

from __future__ import annotations

import pytest
import torch
from rank_helpers import random_ids, save_tiny

from prunelens.compression.remove_dropped import DroppedAttention, DroppedMLP, dropped_sublayers, load_slim, slim_model
from prunelens.compression.sequential import drop_units, save_checkpoint
from prunelens.errors import PrunelensError
from prunelens.model.loading import load_model
from prunelens.units import Unit

DROPS = [Unit(0, "attn"), Unit(2, "mlp"), Unit(3, "attn"), Unit(3, "mlp")]  # L0.attn: the cache's length layer


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def dropped_ckpt(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"slim-{request.param}")
    src = save_tiny(base / "src", arch=request.param, layers=5)
    loaded = load_model(str(src))
    drop_units(loaded, DROPS)
    return save_checkpoint(loaded, base / "dropped", {"note": "test"})


def _greedy(model, ids, steps=12):
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    return out[:, ids.shape[1]:]


def test_detects_exactly_the_dropped_sublayers(dropped_ckpt):
    plain = load_model(str(dropped_ckpt))
    # L3 lost both sublayers: drop_units removes it as a block, so L3 now is the old L4
    assert [u.name for u in dropped_sublayers(plain.adapter)] == ["L0.attn", "L2.mlp"]


def test_slim_model_matches_the_plain_checkpoint(dropped_ckpt):
    plain = load_model(str(dropped_ckpt))
    slim = load_slim(str(dropped_ckpt))
    assert isinstance(slim.model.model.layers[0].self_attn, DroppedAttention)
    assert isinstance(slim.model.model.layers[2].mlp, DroppedMLP)
    attn = sum(p.numel() for p in plain.model.model.layers[0].self_attn.parameters())
    mlp = sum(p.numel() for p in plain.model.model.layers[2].mlp.parameters())
    before = sum(p.numel() for p in plain.model.parameters())
    after = sum(p.numel() for p in slim.model.parameters())
    assert before - after == attn + mlp == slim.slim["params_freed"]
    ids = random_ids(batch=3, length=10)
    with torch.no_grad():
        a = plain.model(input_ids=ids).logits
        b = slim.model(input_ids=ids).logits
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # generation with a KV cache: the dropped L0 attention keeps the cache's length right
    assert torch.equal(_greedy(slim.model, ids), _greedy(plain.model, ids))


def test_slim_cache_holds_no_keys_for_dropped_attention(dropped_ckpt):
    slim = load_slim(str(dropped_ckpt))
    ids = random_ids(batch=2, length=7)
    with torch.no_grad():
        out = slim.model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    assert cache.get_seq_length() == 7
    keys0 = cache.layers[0].keys
    keys1 = cache.layers[1].keys
    assert keys0.numel() == 2 * 7 and keys1.numel() > 10 * keys0.numel()


def test_slim_model_rejects_blocks(dropped_ckpt):
    plain = load_model(str(dropped_ckpt))
    with pytest.raises(PrunelensError, match="removes sublayers"):
        slim_model(plain, [Unit(1, "block")])


def test_nothing_dropped_nothing_removed(tmp_path):
    src = save_tiny(tmp_path / "src", layers=3)
    slim = load_slim(str(src))
    assert slim.slim["removed"] == [] and slim.slim["params_freed"] == 0

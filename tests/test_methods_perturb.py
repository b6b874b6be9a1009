"""Every method perturbs one unit reversibly, on every tiny architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, make_tiny_model

from prunelens.compression.calibration import collect_stats
from prunelens.compression.methods import parse_method
from prunelens.model.adapters import get_adapter
from prunelens.units import Unit

SPECS = ["magnitude", "wanda", "wanda:pattern=2:4", "sparsegpt", "sparsegpt:pattern=2:4", "rtn:bits=3",
         "gptq:bits=3,group_size=16", "drop"]
UNITS = [Unit(1, "block"), Unit(1, "attn"), Unit(1, "mlp")]


@pytest.fixture(scope="module", params=TINY_ARCHS)
def setup(request):
    model = make_tiny_model(request.param)
    ad = get_adapter(model)
    ids = torch.randint(2, 96, (3, 12), generator=torch.Generator().manual_seed(0))
    stats = {k: collect_stats(ad, UNITS, k, ids) for k in ("input_norms", "hessian")}
    with torch.no_grad():
        dense = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return model, ad, ids, stats, dense


@pytest.mark.parametrize("spec", SPECS)
def test_perturb_is_reversible_local_and_effective(setup, spec):
    model, ad, ids, stats, dense = setup
    method = parse_method(spec)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for unit in UNITS:
        with torch.no_grad(), method.perturb(ad, unit, stats.get(method.calibration)):
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        k = unit.layer
        for i in range(k + 1):  # hidden_states[i] is layer i's input: untouched upstream
            assert torch.equal(out.hidden_states[i], dense.hidden_states[i]), (spec, unit, i)
        assert not torch.allclose(out.hidden_states[k + 1], dense.hidden_states[k + 1], atol=1e-6), (spec, unit)
        assert not torch.allclose(out.logits, dense.logits, atol=1e-6)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), spec
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, dense.logits)


def test_perturb_restores_after_an_exception(setup):
    model, ad, ids, stats, dense = setup
    for spec in ("wanda", "drop"):
        with pytest.raises(RuntimeError):
            with parse_method(spec).perturb(ad, Unit(1, "attn"), stats["input_norms"]):
                raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, dense.logits)


def test_weight_methods_need_their_statistics(setup):
    from prunelens.errors import PrunelensError

    _, ad, _, _, _ = setup
    with pytest.raises(PrunelensError, match="calibration"):
        with parse_method("sparsegpt").perturb(ad, Unit(0, "mlp")):
            pass


@pytest.mark.parametrize("unit", [Unit(0, "attn"), Unit(0, "block"), Unit(1, "attn")])
def test_dropped_unit_inside_incremental_decoding_matches_full_forward(setup, unit):
    """With a KV cache, token by token, a dropped L0.attn / L0 must still give the full-sequence logits.

    DynamicCache.get_seq_length() reads layer 0: the dropped module writes a zero placeholder
    so that positions and masks keep counting (without it positions restart at 0).
    """
    from transformers import DynamicCache

    model, ad, _, _, _ = setup
    ids = torch.randint(2, 96, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), parse_method("drop").perturb(ad, unit):
        full = model(input_ids=ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        parts = [model(input_ids=ids[:, :6], past_key_values=cache, use_cache=True).logits]
        for t in range(6, 10):
            parts.append(model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
        assert cache.get_seq_length() == 10
        gen = model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert gen.shape == (1, 8)

"""Adapters on tiny random models of every supported architecture."""

from __future__ import annotations

import pytest
import torch

from prunelens.compression.methods import parse_method
from prunelens.errors import PrunelensError
from prunelens.model.adapters import get_adapter
from prunelens.units import Unit

IDS = torch.randint(2, 90, (2, 12), generator=torch.Generator().manual_seed(1))


def _hidden_states(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states


def test_units_and_readout_match_the_model(tiny_arch_model):
    arch, model = tiny_arch_model
    ad = get_adapter(model)
    assert ad.num_layers == 3
    assert [u.name for u in ad.units()][:3] == ["L0", "L0.attn", "L0.mlp"]
    assert len(ad.units()) == 9
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
        calls, final = ad.capture(IDS)
        z = ad.readout(final)  # final norm + LM head
    torch.testing.assert_close(z, logits, rtol=1e-5, atol=1e-5)


def test_capture_then_run_layer_reproduces_the_dense_pass(tiny_arch_model):
    _, model = tiny_arch_model
    ad = get_adapter(model)
    with torch.no_grad():
        calls, final = ad.capture(IDS)
        for i in range(ad.num_layers):
            out = ad.run_layer(i, calls[i].hidden, calls[i])
            expected = calls[i + 1].hidden if i + 1 < ad.num_layers else final
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["block", "attn", "mlp"])
def test_perturbing_one_unit_changes_it_and_nothing_upstream(tiny_arch_model, kind):
    _, model = tiny_arch_model
    ad = get_adapter(model)
    unit = Unit(1, kind)
    method = parse_method("magnitude:sparsity=0.6")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense = _hidden_states(model)
    with method.perturb(ad, unit):
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        pert = _hidden_states(model)
    # hidden_states[i] is the input of layer i; the unit sits in layer 1
    for i in (0, 1):
        assert torch.equal(pert[i], dense[i]), f"upstream hidden state {i} changed"
    assert (pert[2] - dense[2]).abs().max() > 1e-4, "the unit's own output did not change"
    assert changed and all(".1." in k for k in changed), changed
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored bit-for-bit"


def test_unknown_unit_and_unsupported_architecture(tiny_llama):
    ad = get_adapter(tiny_llama)
    with pytest.raises(PrunelensError, match="does not exist"):
        ad.module(Unit(7, "attn"))
    from transformers import AutoModelForCausalLM, BertConfig

    bert = AutoModelForCausalLM.from_config(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32, is_decoder=True))
    with pytest.raises(PrunelensError, match="unsupported architecture 'bert'.*llama"):
        get_adapter(bert)

"""The adapter's one capture/replay primitive against the model's own forward (output_hidden_states)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, make_tiny_model

from prunelens.compression.calibration import collect_stats
from prunelens.model.adapters import LayerCall, get_adapter
from prunelens.units import Unit

IDS = torch.randint(2, 90, (2, 12), generator=torch.Generator().manual_seed(11))


def _reference(model, ids=IDS, **kw):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True, use_cache=False, **kw).hidden_states


def _hooks(ad):
    """The hook ids on every layer and on the final norm (transformers installs some of its own)."""
    mods = [*ad.layers, ad.final_norm]
    return [(list(m._forward_pre_hooks), list(m._forward_hooks)) for m in mods]


def _four_layers(arch):
    """A tiny 4-layer model's adapter, its forward's hidden states, and the hooks it starts with."""
    ad = get_adapter(make_tiny_model(arch, layers=4))
    return ad, _reference(ad.model), _hooks(ad)


def _no_leftovers(ad, before):
    """Every hook added is removed and every layer runs its own forward again."""
    assert all("forward" not in layer.__dict__ for layer in ad.layers)
    assert _hooks(ad) == before


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_capture_records_every_layer_input_and_the_last_output(arch):
    ad, ref, before = _four_layers(arch)
    with torch.no_grad():
        calls, final = ad.capture(IDS)
        assert len(calls) == 4 and all(isinstance(c, LayerCall) for c in calls)
        for i in range(4):  # hidden_states[i] is the input of layer i
            torch.testing.assert_close(calls[i].hidden, ref[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(ad.final_norm(final), ref[4], rtol=0, atol=1e-5)  # ref[-1] has the final norm
    _no_leftovers(ad, before)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_layer_calls_run_no_layer_and_replay_the_forward(arch):
    """Sequential replay from layer 0's input with ``run_layer`` gives every hidden state of a plain forward."""
    ad, ref, before = _four_layers(arch)
    ran = []
    hooks = [m.register_forward_hook(lambda *_: ran.append(1)) for m in ad.model.modules() if type(m).__name__ == "Linear"]
    with torch.no_grad():
        calls = ad.layer_calls(IDS)
    for h in hooks:
        h.remove()
    assert not ran, "recording the calls ran a layer (or the LM head)"
    assert all(c.hidden is calls[0].hidden or torch.equal(c.hidden, calls[0].hidden) for c in calls)
    with torch.no_grad():
        h = calls[0].hidden
        torch.testing.assert_close(h, ref[0], rtol=0, atol=1e-5)
        for i in range(3):
            h = ad.run_layer(i, h, calls[i])
            torch.testing.assert_close(h, ref[i + 1], rtol=0, atol=1e-5)
        h = ad.final_norm(ad.run_layer(3, h, calls[3]))
        torch.testing.assert_close(h, ref[4], rtol=0, atol=1e-5)
    _no_leftovers(ad, before)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_capture_with_left_padding_matches_the_masked_forward(arch):
    model = make_tiny_model(arch, layers=3)
    ad = get_adapter(model)
    mask = torch.ones_like(IDS)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    ref = _reference(model, attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        calls, final = ad.capture(IDS, mask, position_ids=positions)
        replayed = ad.run_layer(1, calls[1].hidden, calls[1])
    keep = mask.bool()  # padded positions are not compared
    for i in range(3):
        torch.testing.assert_close(calls[i].hidden[keep], ref[i][keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(replayed[keep], ref[2][keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(ad.final_norm(final)[keep], ref[3][keep], rtol=0, atol=1e-5)


def test_a_patched_layer_forward_is_restored():
    """A forward set on the instance (accelerate does this for device maps) is put back after ``layer_calls``."""
    model = make_tiny_model("llama", layers=2)
    ad = get_adapter(model)
    before = _hooks(ad)
    layer = ad.layers[1]
    own = layer.forward
    layer.forward = lambda *a, **k: own(*a, **k)
    patched = layer.forward
    with torch.no_grad():
        ad.layer_calls(IDS)
    assert layer.forward is patched
    del layer.forward
    _no_leftovers(ad, before)


def test_run_decoder_skips_the_lm_head_and_a_failing_pass_cleans_up():
    model = make_tiny_model("llama", layers=2)
    ad = get_adapter(model)
    before = _hooks(ad)
    heads = []
    handle = ad.lm_head.register_forward_hook(lambda *_: heads.append(1))
    ad.run_decoder(IDS)
    handle.remove()
    assert heads == []

    def boom(*_):
        raise RuntimeError("layer failed")

    h = ad.layers[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="layer failed"):
        ad.layer_calls(IDS)
    h.remove()
    _no_leftovers(ad, before)


def test_watching_gives_each_layer_output_and_last_position():
    model = make_tiny_model("qwen2", layers=3)
    ad = get_adapter(model)
    ref = _reference(model)
    before = _hooks(ad)
    with torch.no_grad(), ad.watching([0, 1]) as full, ad.watching([1], last_position=True) as last:
        model(input_ids=IDS, use_cache=False)
    torch.testing.assert_close(full[0][0], ref[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(full[1][0], ref[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(last[1][0], ref[2][:, -1], rtol=0, atol=1e-5)
    _no_leftovers(ad, before)


def test_calibration_stats_equal_sums_over_the_captured_inputs():
    """Wanda's input norms from ``collect_stats`` equal (1/N)·Σ x² over the inputs a capture records."""
    model = make_tiny_model("llama", layers=2)
    ad = get_adapter(model)
    before = _hooks(ad)
    stats = collect_stats(ad, [Unit(1, "mlp")], "input_norms", IDS, batch_size=1)
    seen = []
    mlp = ad.layers[1].mlp
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        ad.capture(IDS)
    handle.remove()
    x = seen[0].double()
    expected = (x * x).sum(dim=(0, 1)) / IDS.shape[0]
    name = "model.layers.1.mlp.gate_proj"
    torch.testing.assert_close(stats[name].value.double(), expected, rtol=1e-5, atol=1e-6)
    _no_leftovers(ad, before)

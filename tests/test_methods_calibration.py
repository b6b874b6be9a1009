"""Calibration statistics against an independent computation of the linear inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from prunelens.compression.calibration import Stats, collect_stats
from prunelens.model.adapters import get_adapter
from prunelens.units import Unit


def _inputs_by_hand(model, module, ids_batches):
    """Every input row a module sees, collected with a plain hook (per batch, list of [b, s, d])."""
    seen = []
    h = module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        for ids in ids_batches:
            model(input_ids=ids, use_cache=False)
    h.remove()
    return seen


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_running_means_equal_direct_sums(arch):
    model = make_tiny_model(arch)
    ad = get_adapter(model)
    ids = torch.randint(0, 96, (7, 12), generator=torch.Generator().manual_seed(0))
    units = [Unit(1, "block")]
    norms = collect_stats(ad, units, "input_norms", ids, batch_size=3)  # batches of 3, 3, 1 sequences
    hess = collect_stats(ad, units, "hessian", ids, batch_size=3)
    for name, mod in ad.linears(Unit(1, "block")).items():
        xs = _inputs_by_hand(model, mod, [ids[0:3], ids[3:6], ids[6:7]])
        x = torch.cat([b.reshape(-1, b.shape[-1]) for b in xs]).double()
        n_seq = 7
        assert norms[name].nsamples == n_seq
        assert torch.allclose(norms[name].value.double(), (x * x).sum(0) / n_seq, rtol=1e-5, atol=1e-6)
        assert torch.allclose(hess[name].value.double(), 2 * x.t() @ x / n_seq, rtol=1e-4, atol=1e-5)


def test_shared_inputs_share_one_statistic(tiny_llama):
    ad = get_adapter(tiny_llama)
    ids = torch.randint(0, 96, (2, 8))
    stats = collect_stats(ad, [Unit(0, "attn"), Unit(0, "mlp")], "hessian", ids)
    p = "model.layers.0."
    assert stats[p + "self_attn.q_proj"] is stats[p + "self_attn.k_proj"] is stats[p + "self_attn.v_proj"]
    assert stats[p + "mlp.gate_proj"] is stats[p + "mlp.up_proj"]
    assert stats[p + "self_attn.o_proj"] is not stats[p + "self_attn.q_proj"]
    assert stats[p + "mlp.down_proj"].value.shape == (64, 64)
    assert len({id(s) for s in stats.values()}) == 4  # qkv, o, gate/up, down


def test_attention_mask_drops_padding_tokens():
    st = Stats.empty("input_norms", 2)
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    st.add(x, mask=torch.tensor([[1, 0]]))
    assert torch.allclose(st.value, torch.tensor([1.0, 4.0]))


def test_only_requested_units_are_hooked(tiny_llama):
    ad = get_adapter(tiny_llama)
    stats = collect_stats(ad, [Unit(2, "mlp")], "input_norms", torch.randint(0, 96, (2, 8)))
    assert set(stats) == {f"model.layers.2.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")}

"""Unit selection and method parameter validation."""

from __future__ import annotations

import pytest
import torch

from prunelens.compression.methods import parse_method
from prunelens.compression.sparsity_masks import nm_mask, topk_mask
from prunelens.errors import PrunelensError
from prunelens.units import Unit, select_units


def test_select_units():
    assert [u.name for u in select_units("L1,L0.attn", 3)] == ["L0.attn", "L1"]
    assert [u.name for u in select_units("L0-2.mlp", 3)] == ["L0.mlp", "L1.mlp", "L2.mlp"]
    assert len(select_units("all", 4)) == 12 and len(select_units("attn,mlp", 4)) == 8
    assert Unit.parse("L12.mlp") == Unit(12, "mlp") and str(Unit(3, "block")) == "L3"
    with pytest.raises(PrunelensError, match="does not exist"):
        select_units("L5", 3)
    with pytest.raises(PrunelensError, match="bad unit name"):
        select_units("layer5", 3)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuch", "unknown method 'nosuch'; available: .*magnitude"),
        ("magnitude:sparsity=1.0", r"sparsity must lie in \[0, 1\)"),
        ("magnitude:sparsity=abc", "expected float"),
        ("magnitude:pattern=4:2", "need 0 < N <= M"),
        ("magnitude:bits=4", "has no parameter bits"),
        ("magnitude:sparsity", "expected key=value"),
    ],
)
def test_invalid_method_parameters(spec, message):
    with pytest.raises(PrunelensError, match=message):
        parse_method(spec)


def test_method_spec_roundtrip():
    m = parse_method("magnitude:pattern=2:4")
    assert m.spec == "magnitude:pattern=2:4" and m.pattern == "2:4" and m.sparsity == 0.5
    assert parse_method("magnitude").spec == "magnitude"


def test_magnitude_masks_against_brute_force():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g)
    m = parse_method("magnitude:sparsity=0.25")
    out = m.compress_weight(w, None)
    k = int(w.numel() * 0.25)
    threshold = sorted(w.abs().flatten().tolist())[k - 1]
    expected = torch.where(w.abs() <= threshold, torch.zeros_like(w), w)
    assert torch.equal(out, expected)
    nm = parse_method("magnitude:pattern=2:4").compress_weight(w, None)
    for r in range(8):
        for c in range(0, 16, 4):
            group = w[r, c:c + 4].abs().tolist()
            keep = sorted(range(4), key=lambda j: -group[j])[:2]
            for j in range(4):
                assert (nm[r, c + j] != 0) == (j in keep)
    assert (nm == 0).float().mean().item() == pytest.approx(0.5)


def test_masks_shapes():
    s = torch.rand(6, 8)
    assert topk_mask(s, 0.5, dim=1).sum(1).tolist() == [4] * 6
    with pytest.raises(PrunelensError, match="multiple of 3"):
        nm_mask(s, 1, 3)

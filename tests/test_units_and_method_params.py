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


def test_the_overlap_rule_against_brute_force_over_every_set_of_two_layers_units():
    """``first_overlap``/``max_disjoint``/``covers_layer`` (the one home of the rules) against the rule written
    out directly: two units overlap when they are equal, or in one layer with one of them its block."""
    import itertools

    from prunelens.units import Unit, covers_layer, first_overlap, max_disjoint

    pool = [Unit(i, k) for i in range(2) for k in ("block", "attn", "mlp")]

    def clash(a: Unit, b: Unit) -> bool:
        return a == b or (a.layer == b.layer and "block" in (a.kind, b.kind))

    for n in range(len(pool) + 1):
        for combo in itertools.permutations(pool, n) if n <= 3 else itertools.combinations(pool, n):
            disjoint = not any(clash(a, b) for a, b in itertools.combinations(combo, 2))
            hit = first_overlap(combo)
            assert (hit is None) == disjoint, combo
            if hit is not None:
                assert clash(*hit) and combo.index(hit[1]) < combo.index(hit[0])
    best = max(n for n in range(len(pool) + 1) for c in itertools.combinations(pool, n)
               if not any(clash(a, b) for a, b in itertools.combinations(c, 2)))
    assert max_disjoint(pool) == best == 4
    assert first_overlap([Unit(0, "mlp"), Unit(0, "mlp")]) == (Unit(0, "mlp"), Unit(0, "mlp"))
    assert covers_layer(["attn", "mlp"]) and covers_layer(["block"]) and not covers_layer(["attn"])

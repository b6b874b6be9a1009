"""Masks and grids of the weight methods against independent computations (python loops)."""

from __future__ import annotations

import itertools

import pytest
import torch

from prunelens.compression.calibration import Stats
from prunelens.compression.methods import parse_method
from prunelens.compression.quant_grid import Grid
from prunelens.errors import PrunelensError


def _norm_stats(s: torch.Tensor) -> Stats:
    return Stats("input_norms", s)


def _hessian_stats(x: torch.Tensor) -> Stats:
    return Stats("hessian", 2 * x.t() @ x / x.shape[0])


def test_wanda_mask_equals_brute_force_per_row():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 20, generator=g)
    s = torch.rand(20, generator=g) * 3
    out = parse_method("wanda:sparsity=0.4").compress_weight(w, _norm_stats(s))
    k = int(20 * 0.4)
    for r in range(7):
        scores = [abs(float(w[r, j])) * float(s[j]) ** 0.5 for j in range(20)]
        pruned = sorted(range(20), key=lambda j: scores[j])[:k]
        for j in range(20):
            expected = 0.0 if j in pruned else float(w[r, j])
            assert float(out[r, j]) == expected


def test_wanda_nm_brute_force():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 16, generator=g)
    s = torch.rand(16, generator=g)
    out = parse_method("wanda:pattern=2:4").compress_weight(w, _norm_stats(s))
    for r in range(5):
        for g0 in range(0, 16, 4):
            scores = {j: abs(float(w[r, j])) * float(s[j]) ** 0.5 for j in range(g0, g0 + 4)}
            kept = sorted(scores, key=scores.get)[2:]
            for j in range(g0, g0 + 4):
                assert float(out[r, j]) == (float(w[r, j]) if j in kept else 0.0)


@pytest.mark.parametrize("spec", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (4, 8)])
def test_nm_patterns_are_valid_with_exact_sparsity(spec, n, m):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 32, generator=g)
    w = torch.randn(6, 32, generator=g)
    stats = {"magnitude": None, "wanda": _norm_stats((x * x).sum(0)), "sparsegpt": _hessian_stats(x)}[spec]
    out = parse_method(f"{spec}:pattern={n}:{m}").compress_weight(w, stats)
    groups = (out != 0).reshape(6, 32 // m, m).sum(-1)
    assert torch.all(groups == n), groups
    assert float((out == 0).float().mean()) == pytest.approx(1 - n / m, abs=0)


@pytest.mark.parametrize("spec", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_unstructured_sparsity_reached(spec, sparsity):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 64, generator=g)
    w = torch.randn(16, 64, generator=g)
    stats = {"magnitude": None, "wanda": _norm_stats((x * x).sum(0)), "sparsegpt": _hessian_stats(x)}[spec]
    out = parse_method(f"{spec}:sparsity={sparsity}").compress_weight(w, stats)
    assert float((out == 0).float().mean()) == pytest.approx(sparsity, abs=1 / 64)


def test_magnitude_keeps_the_largest():
    w = torch.tensor([[0.1, -5.0, 0.3, 2.0], [-0.2, 0.05, 4.0, -1.0]])
    out = parse_method("magnitude:sparsity=0.5").compress_weight(w, None)
    assert torch.equal(out, torch.tensor([[0.0, -5.0, 0.0, 2.0], [0.0, 0.0, 4.0, -1.0]]))


@pytest.mark.parametrize("bits,sym,group", list(itertools.product([2, 3, 4, 8], [False, True], [-1, 8])))
def test_rtn_values_on_grid_and_error_within_half_step(bits, sym, group):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 24, generator=g) * 0.05
    out = parse_method(f"rtn:bits={bits},sym={sym},group_size={group}").compress_weight(w, None)
    size = 24 if group == -1 else group
    for r in range(6):
        for c0 in range(0, 24, size):
            block = w[r, c0 : c0 + size]
            lo, hi = min(float(block.min()), 0.0), max(float(block.max()), 0.0)
            if sym:
                hi = max(abs(lo), hi)
                lo = -hi
            scale = (hi - lo) / (2**bits - 1)
            zero = (2**bits) / 2 if sym else round(-lo / scale)
            q = out[r, c0 : c0 + size].double() / scale + zero  # integer codes
            assert torch.allclose(q, q.round(), atol=1e-3)
            assert q.round().min() >= 0 and q.round().max() <= 2**bits - 1
            assert float((out[r, c0 : c0 + size] - block).abs().max()) <= scale / 2 * (1 + 1e-3)  # float32 rounding at the range ends
    assert len(torch.unique(out[0, :size])) <= 2**bits


def test_rtn_group_size_not_dividing_width():
    w = torch.randn(3, 10)
    out = Grid(4, False, 4).fake_quant(w)
    assert out.shape == w.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("spec,needle", [
    ("wanda:sparsity=1.0", "[0, 1)"),
    ("sparsegpt:sparsity=-0.1", "[0, 1)"),
    ("magnitude:pattern=5:4", "N <= M"),
    ("wanda:pattern=two", "N:M"),
    ("rtn:bits=1", "2..8"),
    ("gptq:bits=9", "2..8"),
    ("rtn:group_size=0", "group_size"),
    ("wanda:bits=4", "no parameter"),
    ("nosuch", "unknown method"),
])
def test_validation_errors(spec, needle):
    with pytest.raises(PrunelensError, match=None) as exc:
        parse_method(spec)
    assert needle in str(exc.value)


def test_unit_kind_error_lists_what_it_can(tiny_llama):
    from prunelens.compression.methods import WeightMethod
    from prunelens.model.adapters import get_adapter
    from prunelens.units import Unit

    class AttnOnly(WeightMethod):
        name = "attn_only"
        unit_kinds = ("attn",)

        def compress_weight(self, weight, stats=None):
            return weight

    with pytest.raises(PrunelensError, match="it acts on: attn"):
        with AttnOnly().perturb(get_adapter(tiny_llama), Unit(0, "mlp")):
            pass


def test_nm_width_not_multiple_is_an_error():
    with pytest.raises(PrunelensError, match="multiple of 4"):
        parse_method("magnitude:pattern=2:4").compress_weight(torch.randn(2, 6), None)

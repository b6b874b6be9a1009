"""SparseGPT / GPTQ (the OBS sweep) against closed forms and against the simpler methods."""

from __future__ import annotations

import warnings

import pytest
import torch

from prunelens.compression.calibration import Stats
from prunelens.compression.methods import parse_method
from prunelens.compression.obs_solver import inverse_hessian_cholesky, obs_compress
from prunelens.errors import PrunelensError


def correlated_inputs(n: int = 2048, d: int = 64, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features and uneven scales (like real activations)."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, d // 4, generator=g)
    mix = torch.randn(d // 4, d, generator=g)
    scales = torch.logspace(-1, 1, d)[torch.randperm(d, generator=g)]
    return (latent @ mix + 0.1 * torch.randn(n, d, generator=g)) * scales


def output_error(w: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.norm(x @ w.t() - x @ w2.t()))


@pytest.fixture(scope="module")
def layer():
    x = correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    return w, x, Stats("input_norms", (x * x).sum(0)), Stats("hessian", 2 * x.t() @ x / x.shape[0])


@pytest.mark.parametrize("extra", ["sparsity=0.5", "sparsity=0.7", "pattern=2:4"])
def test_sparsegpt_beats_wanda_and_magnitude_on_correlated_inputs(layer, extra):
    w, x, norms, hess = layer
    errs = {
        "magnitude": output_error(w, parse_method(f"magnitude:{extra}").compress_weight(w, None), x),
        "wanda": output_error(w, parse_method(f"wanda:{extra}").compress_weight(w, norms), x),
        "sparsegpt": output_error(w, parse_method(f"sparsegpt:{extra}").compress_weight(w, hess), x),
    }
    assert errs["sparsegpt"] < 0.95 * errs["wanda"], errs
    assert errs["sparsegpt"] < 0.95 * errs["magnitude"], errs


@pytest.mark.parametrize("bits,group", [(3, -1), (4, 16), (2, -1)])
def test_gptq_beats_rtn_on_correlated_inputs(layer, bits, group):
    w, x, _, hess = layer
    rtn = parse_method(f"rtn:bits={bits},group_size={group}").compress_weight(w, None)
    gptq = parse_method(f"gptq:bits={bits},group_size={group}").compress_weight(w, hess)
    assert output_error(w, gptq, x) < 0.8 * output_error(w, rtn, x)


def test_gptq_values_lie_on_a_grid_per_group(layer):
    w, _, _, hess = layer
    out = parse_method("gptq:bits=3,group_size=16").compress_weight(w, hess)
    for r in range(0, 48, 7):
        for c0 in range(0, 64, 16):
            vals = torch.unique(out[r, c0 : c0 + 16])
            assert len(vals) <= 8
            steps = torch.diff(vals)
            base = steps.min()
            assert torch.allclose(steps / base, (steps / base).round(), atol=1e-3)  # equally spaced levels


def _hessian(d: int, seed: int) -> torch.Tensor:
    x = correlated_inputs(n=400, d=d, seed=seed).double()
    return 2 * x.t() @ x / x.shape[0]


@pytest.mark.parametrize("q", [0, 3, 7])
def test_single_column_update_equals_closed_form_obs(q):
    """Pruning weight q alone: the remaining weights move by δw = -(w_q/[H⁻¹]_qq) H⁻¹[:, q].

    Columns before q were already processed (kept, error 0), so they are frozen: the closed
    form uses the Hessian of the free coordinates q.. (for q = 0 that is the full H).
    """
    d = 10
    h = _hessian(d, seed=q)
    w = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(q))
    mask = torch.zeros(3, d, dtype=torch.bool)
    mask[:, q] = True
    out = obs_compress(w, h, prune_mask=mask, percdamp=1e-12).double()
    hinv = torch.linalg.inv(h[q:, q:])
    expected = w.clone()
    expected[:, q:] -= (w[:, q] / hinv[0, 0]).unsqueeze(1) * hinv[:, 0].unsqueeze(0)
    assert abs(float(expected[0, q])) < 1e-9  # the closed form itself zeroes w_q
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_obs_blocks_do_not_change_the_result():
    h = _hessian(40, seed=5).float()
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(5))
    a = obs_compress(w, h, sparsity=0.5, blocksize=40)
    mask = a == 0
    b = obs_compress(w, h, prune_mask=mask, blocksize=8)  # same mask, lazy updates across 5 blocks
    assert torch.allclose(a, b, atol=1e-4)


def test_dead_inputs_are_zeroed():
    x = correlated_inputs(n=300, d=16)
    x[:, 5] = 0
    h = 2 * x.t() @ x / 300
    w = torch.randn(4, 16)
    out = obs_compress(w, h, sparsity=0.25)
    assert torch.all(out[:, 5] == 0) and torch.isfinite(out).all()


def test_non_pd_hessian_retries_with_more_damping_and_warns():
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    h = x.t() @ x  # rank 3 of 8, then pushed slightly indefinite (as rounding does to real Hessians)
    h -= 0.03 * torch.diag(h).mean() * torch.eye(8)  # 1% damping is not enough, 10% is
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        u = inverse_hessian_cholesky(h, 0.01, name="test")
    assert torch.isfinite(u).all()
    damped = h + 0.1 * torch.diag(h).mean() * torch.eye(8)
    assert torch.allclose(u.t() @ u, torch.linalg.inv(damped), rtol=1e-3, atol=1e-3)  # H⁻¹ = UᵀU at 10% damping


def test_hopeless_hessian_is_a_clear_error():
    h = -torch.eye(4) * 1e6
    h[0, 0] = 1.0
    with pytest.raises(PrunelensError, match="not positive definite"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inverse_hessian_cholesky(h, 0.01)

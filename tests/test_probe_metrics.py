"""The probe metrics against a naive float64 computation and the Taylor limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from probe_helpers import one_minus_cos, perp_pred

from prunelens.probe.metrics import row_metrics, vector_metrics

TEMPS = [0.5, 1.0, 2.0]


def naive(h, h2, z, z2, temps, cands=None):
    """Textbook formulas, float64, one row at a time."""
    h, h2, z, z2 = (np.asarray(a, dtype=np.float64) for a in (h, h2, z, z2))
    out = {k: [] for k in ("cos", "cos_pred", "rel", "kl", "kl_pred", "top1", "ckl", "cagree", "cmass", "crank")}
    for r in range(len(h)):
        cos, pred, rel = [], [], []
        cos.append([one_minus_cos(h[r], h2[r])] * len(temps))
        pred.append([perp_pred(h[r], h2[r])] * len(temps))
        rel.append([np.linalg.norm(h2[r] - h[r]) / np.linalg.norm(h[r])] * len(temps))
        cos.append([one_minus_cos(z[r], z2[r])] * len(temps))
        pred.append([perp_pred(z[r], z2[r])] * len(temps))
        rel.append([np.linalg.norm(z2[r] - z[r]) / np.linalg.norm(z[r])] * len(temps))
        pc, pp, pr, kl, klp, ck, ca, cm, cr = [], [], [], [], [], [], [], [], []
        dz = z2[r] - z[r]
        for t in temps:
            p = np.exp(z[r] / t - np.max(z[r] / t)); p /= p.sum()
            q = np.exp(z2[r] / t - np.max(z2[r] / t)); q /= q.sum()
            pc.append(one_minus_cos(p, q))
            w = p**2 / (p**2).sum()
            pp.append((w @ (dz - w @ dz) ** 2) / (2 * t * t))
            pr.append(np.linalg.norm(q - p) / np.linalg.norm(p))
            kl.append(np.sum(p * (np.log(p) - np.log(q))))
            klp.append((p @ (dz - p @ dz) ** 2) / (2 * t * t))
            if cands is not None:
                c = [i for i in cands[r] if i >= 0]
                pcn = p[c] / p[c].sum(); qcn = q[c] / q[c].sum()
                ck.append(np.sum(pcn * np.log(pcn / qcn)))
                ca.append(float(np.argmax(z[r][c]) == np.argmax(z2[r][c])))
                cm.append(q[c].sum())
                cr.append(float(np.sum(q > q[c].max())))
        cos.append(pc); pred.append(pp); rel.append(pr)
        out["cos"].append(cos); out["cos_pred"].append(pred); out["rel"].append(rel)
        out["kl"].append(kl); out["kl_pred"].append(klp)
        out["top1"].append(float(np.argmax(z[r]) == np.argmax(z2[r])))
        out["ckl"].append(ck); out["cagree"].append(ca); out["cmass"].append(cm); out["crank"].append(cr)
    res = {k: np.asarray(v) for k, v in out.items()}
    for k in ("cos", "cos_pred", "rel"):
        res[k] = res[k].transpose(1, 2, 0)  # [space, T, rows]
    for k in ("kl", "kl_pred", "ckl", "cagree", "cmass", "crank"):
        res[k] = res[k].T
    return res


def make_rows(rows=7, d=24, v=50, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, generator=g, dtype=torch.float64)
    dh = scale * torch.randn(rows, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64)
    return h, dh, h @ w.T, (h + dh) @ w.T


@pytest.mark.parametrize("scale", [0.3, 5.0])  # 5: exp(Δz/T) overflows float32; those rows go the direct way
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_metrics_match_naive(dtype, scale):
    h, dh, z, z2 = make_rows(scale=scale)
    cands = torch.tensor([[3, 7, 11, -1]] * 4 + [[-1, -1, -1, -1]] * 3)
    m = row_metrics(h.to(dtype), dh.to(dtype), z.to(dtype), z2.to(dtype), TEMPS, cands)
    ref = naive(h, h + dh, z, z2, TEMPS, cands.tolist()[:4] + [[5]] * 3)
    rtol = 1e-9 if dtype == torch.float64 else 2e-4
    atol = 1e-15 if dtype == torch.float64 else 1e-9  # values near 1e-12 (p almost one-hot at T=0.5)
    np.testing.assert_allclose(m.cos_dev.numpy(), ref["cos"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.cos_dev_pred.numpy(), ref["cos_pred"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.rel_norm.numpy(), ref["rel"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.kl.numpy(), ref["kl"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.kl_pred.numpy(), ref["kl_pred"], rtol=rtol, atol=atol)
    np.testing.assert_array_equal(m.top1_agree.numpy(), ref["top1"])
    np.testing.assert_allclose(m.cand_kl[:, :4].numpy(), ref["ckl"][:, :4], rtol=rtol, atol=atol)
    np.testing.assert_array_equal(m.cand_top1_agree[:, :4].numpy(), ref["cagree"][:, :4])
    np.testing.assert_allclose(m.cand_mass[:, :4].numpy(), ref["cmass"][:, :4], rtol=rtol, atol=atol)
    np.testing.assert_array_equal(m.cand_rank[:, :4].numpy(), ref["crank"][:, :4])
    assert torch.isnan(m.cand_kl[:, 4:]).all() and torch.isnan(m.cand_rank[:, 4:]).all()


def test_tiny_perturbation_keeps_relative_precision():
    """At ε = 1e-6 a naive 1 - cos in float64 is pure rounding; the stable forms still match the limit."""
    h, dh, z, z2 = make_rows(scale=1e-6, v=40)
    m = row_metrics(h, dh, z, z2, [1.0])
    # in the limit the Taylor predictions are exact to O(ε): ratio within 1e-4
    np.testing.assert_allclose(m.cos_dev[0, 0].numpy() / m.cos_dev_pred[0, 0].numpy(), 1, rtol=1e-4)
    np.testing.assert_allclose(m.cos_dev[2, 0].numpy() / m.cos_dev_pred[2, 0].numpy(), 1, rtol=1e-4)
    np.testing.assert_allclose(m.kl[0].numpy() / m.kl_pred[0].numpy(), 1, rtol=1e-4)


@pytest.mark.parametrize("space", [0, 2])
def test_taylor_ratio_tends_to_one(space):
    """predicted / measured -> 1 as the perturbation scale ε -> 0 (error shrinks ~linearly)."""
    errs = []
    for eps in (1e-2, 1e-3, 1e-4):
        h, dh, z, z2 = make_rows(scale=eps, seed=1)
        m = row_metrics(h, dh, z, z2, [0.7])
        ratio_cos = (m.cos_dev_pred[space, 0] / m.cos_dev[space, 0]).numpy()
        ratio_kl = (m.kl_pred[0] / m.kl[0]).numpy()
        errs.append(max(np.abs(ratio_cos - 1).max(), np.abs(ratio_kl - 1).max()))
    assert errs[2] < 5e-3
    assert errs[0] > 5 * errs[1] > 25 * errs[2]  # first-order convergence


def test_vector_metrics_parallel_change_has_zero_deviation():
    h = torch.randn(5, 16, dtype=torch.float64)
    c, pred, rel = vector_metrics(h, 0.01 * h)
    assert float(c.abs().max()) < 1e-15 and float(pred.abs().max()) < 1e-15
    np.testing.assert_allclose(rel.numpy(), 0.01, rtol=1e-12)

"""The perturbation metrics per position, measured next to their Taylor predictions.

Rows are positions. For dense ``x`` and perturbed ``x + dx`` (hidden states ``h`` or
logits ``z``), and ``p = softmax(z/T)``, ``q = softmax((z + dz)/T)``:

* measured ``1-cos(x, x+dx)``, ``‖dx‖/‖x‖`` and, in probability space, ``1-cos(p, q)``,
  ``‖q-p‖/‖p‖``, ``KL(p‖q)``, top-1 agreement;
* predicted ``‖dx⊥‖²/(2‖x‖²)``, ``Var_r(dz)/(2T²)`` with ``r ∝ p²``, ``Var_p(dz)/(2T²)``.

Everything is computed from ``dx`` directly (never as a difference of two nearly equal
cosines or log-probabilities), so tiny perturbations keep their relative precision. Vocab-
sized work runs in the input dtype (at least float32) over row chunks; scalars are combined
in float64. Nothing of size [rows × vocab] outlives a chunk except the caller's inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

SPACE_INDEX = {"embedding": 0, "logit": 1, "probability": 2}
ROW_CHUNK_ELEMENTS = 1 << 19  # elements of [rows x vocab] per chunk (~2 MB float32: stays in cache)


def one_minus_cos(norm_x: torch.Tensor, par: torch.Tensor, perp_sq: torch.Tensor) -> torch.Tensor:
    """``1-cos(x, x+dx)`` from ‖x‖, the parallel part ``x̂·dx`` and ``‖dx⊥‖²`` without cancellation.

    ``x + dx = (‖x‖ + par) x̂ + dx⊥``; with ``c = ‖x‖ + par``, ``r = sqrt(c² + ‖dx⊥‖²)``,
    ``1-cos = ‖dx⊥‖² / (r (r + c))`` when ``c ≥ 0`` and ``(r - c)/r`` otherwise.
    """
    c = norm_x + par
    r = torch.sqrt(c * c + perp_sq)
    small = perp_sq / (r * (r + c))
    large = (r - c) / r
    out = torch.where(c >= 0, small, large)
    # 0 only for two zero vectors; a NaN or inf input stays non-finite (never a perfect 0.0)
    out = torch.where(torch.isfinite(c) & torch.isfinite(perp_sq), out, torch.full_like(out, float("nan")))
    return torch.where(r == 0, torch.zeros_like(out), out)


def vector_metrics(x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(measured 1-cos, predicted ``‖dx⊥‖²/(2‖x‖²)``, ``‖dx‖/‖x‖``) per row, float64."""
    x = x.double()
    dx = dx.double()
    xx = (x * x).sum(-1)
    xd = (x * dx).sum(-1)
    coef = torch.where(xx > 0, xd / xx, torch.zeros_like(xx))
    perp = dx - coef.unsqueeze(-1) * x
    perp_sq = (perp * perp).sum(-1)
    dd = (dx * dx).sum(-1)
    norm_x = xx.sqrt()
    par = torch.where(norm_x > 0, xd / norm_x, torch.zeros_like(xd))
    return one_minus_cos(norm_x, par, perp_sq), perp_sq / (2 * xx), dd.sqrt() / norm_x


@dataclass
class RowMetrics:
    """Metrics of a set of rows: ``[space, T, rows]``, ``[T, rows]`` and ``[rows]`` float64 tensors."""

    cos_dev: torch.Tensor
    cos_dev_pred: torch.Tensor
    rel_norm: torch.Tensor
    kl: torch.Tensor
    kl_pred: torch.Tensor
    top1_agree: torch.Tensor
    cand_kl: torch.Tensor
    cand_top1_agree: torch.Tensor
    cand_mass: torch.Tensor
    cand_rank: torch.Tensor

    @classmethod
    def cat(cls, parts: list["RowMetrics"]) -> "RowMetrics":
        return cls(**{f: torch.cat([getattr(p, f) for p in parts], dim=-1) for f in cls.__dataclass_fields__})


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product without a [rows x vocab] temporary."""
    return torch.linalg.vecdot(a, b)


def probability_metrics(z: torch.Tensor, dz: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Per row at one temperature: 1-cos(p,q), its prediction, ‖q-p‖/‖p‖, KL(p‖q), its prediction (float64).

    With ``e = exp((z - max z)/T)`` (so ``p = e/Σe``), ``μ = E_p[dz]`` and ``b = (dz - μ)/T``:
    ``KL = log E_p[e^b] - E_p[b] = log1p(δ + H) - δ`` with ``δ = E_p[b]`` (≈ 0) and
    ``H = E_p[expm1(b) - b]`` (all terms O(b²)); ``q - p = p (g - m)/(1 + m)`` with
    ``g = expm1(b)``, ``m = E_p[g]``.
    """
    inv_t = torch.tensor(1.0 / temperature, dtype=z.dtype, device=z.device)
    return _with_direct_rows(_finish(*_probability_sums(z, dz, inv_t)), z, dz, inv_t)


def _probability_sums(z: torch.Tensor, dz: torch.Tensor, inv_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The vocab-sized work: row sums in the input dtype (one fused kernel when compiled)."""
    zs = z - z.amax(-1, keepdim=True)
    e = torch.exp(zs * inv_t)
    s = e.sum(-1)
    mu = _dot(e, dz) / s
    b = (dz - mu.unsqueeze(-1)) * inv_t
    g = torch.expm1(b)
    w = e * e
    return (s, _dot(e, b), _dot(e, g - b), _dot(e, b * b), w.sum(-1), _dot(w, b), _dot(w, b * b), _dot(w, g), _dot(w, g * g),
            b.amax(-1))


LARGE_B = 30.0  # beyond this exp(b)² may overflow float32: such rows are recomputed directly


def _finish(s, eb, eh, ebb, sw, wb, wbb, wg, wgg, bmax) -> dict[str, torch.Tensor]:
    """Combine the row sums in float64 (``bmax`` marks rows for ``_with_direct_rows``)."""
    sd, sw_ = s.double(), sw.double()
    delta, h_mean, var_p = eb.double() / sd, eh.double() / sd, ebb.double() / sd
    m = delta + h_mean
    kl = torch.log1p(m) - delta
    kl_pred = (var_p - delta * delta) / 2
    # d = g - m: Σw d = Σwg - mΣw, Σw d² = Σwg² - 2mΣwg + m²Σw
    swd = wg.double() - m * sw_
    swdd = wgg.double() - 2 * m * wg.double() + m * m * sw_
    # p = e/s, so Σp² = sw/s², p·Δp = Σw d/(s²(1+m)), ‖Δp‖² = Σw d²/(s²(1+m)²)
    pp = sw_ / (sd * sd)
    p_dp = swd / (sd * sd * (1 + m))
    dpdp = (swdd / (sd * sd * (1 + m) ** 2)).clamp_min(0)
    norm_p = pp.sqrt()
    perp_sq = (dpdp - p_dp * p_dp / pp).clamp_min(0)
    cos_dev = one_minus_cos(norm_p, p_dp / norm_p, perp_sq)
    r_mean = wb.double() / sw_
    cos_pred = (wbb.double() / sw_ - r_mean * r_mean) / 2
    return {"cos_dev": cos_dev, "cos_dev_pred": cos_pred, "rel_norm": dpdp.sqrt() / norm_p, "kl": kl, "kl_pred": kl_pred,
            "_large": bmax.double() > LARGE_B}


def _probability_direct(z: torch.Tensor, dz: torch.Tensor, inv_t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same metrics from p and q themselves: exact for large perturbations (no small-Δ expansions)."""
    z, dz = z.double(), dz.double()
    t = inv_t.double()
    lp, lq = torch.log_softmax(z * t, -1), torch.log_softmax((z + dz) * t, -1)
    p, q = lp.exp(), lq.exp()
    kl = (p * (lp - lq)).sum(-1)
    cos_dev, _, rel = vector_metrics(p, q - p)
    mu = (p * dz).sum(-1, keepdim=True)
    b = (dz - mu) * t
    r = p * p / (p * p).sum(-1, keepdim=True)
    br = b - (r * b).sum(-1, keepdim=True)
    return {"cos_dev": cos_dev, "cos_dev_pred": (r * br * br).sum(-1) / 2, "rel_norm": rel,
            "kl": kl, "kl_pred": (p * b * b).sum(-1) / 2}


def _with_direct_rows(out: dict[str, torch.Tensor], z: torch.Tensor, dz: torch.Tensor, inv_t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Recompute rows with a large perturbation (or a non-finite result) directly."""
    large = out.pop("_large")
    bad = large | ~torch.isfinite(out["kl"]) | ~torch.isfinite(out["cos_dev"])
    if bool(bad.any()):
        idx = bad.nonzero().view(-1)
        direct = _probability_direct(z[idx], dz[idx], inv_t)
        for k in out:
            out[k] = out[k].clone()
            out[k][idx] = direct[k].to(out[k].dtype)
    return out


_compiled: Any = None


def _sums_fn(compiled: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``_probability_sums``, compiled with torch.compile when asked and possible (eager otherwise)."""
    global _compiled
    if not compiled or _compiled is False:
        return _probability_sums
    if _compiled is None:
        _compiled = torch.compile(_probability_sums, dynamic=False)
    return _compiled


def _probability_chunk(z: torch.Tensor, dz: torch.Tensor, temperature: float, rows: int, compiled: bool) -> dict[str, torch.Tensor]:
    """``probability_metrics`` on a chunk padded to ``rows`` rows when compiled (one kernel shape)."""
    global _compiled
    n = z.shape[0]
    inv_t = torch.tensor(1.0 / temperature, dtype=z.dtype, device=z.device)
    if compiled and _compiled is not False:
        if n < rows:
            pad = z.new_zeros(rows - n, z.shape[1])
            z, dz = torch.cat([z, pad]), torch.cat([dz, pad])
        try:
            sums = _sums_fn(True)(z, dz, inv_t)
            return _with_direct_rows(_finish(*(x[:n] for x in sums)), z[:n], dz[:n], inv_t)
        except Exception as exc:  # no compiler, unsupported backend: stay correct, just slower
            warnings.warn(f"torch.compile of the probe metrics failed ({type(exc).__name__}); using eager mode", stacklevel=2)
            _compiled = False
            z, dz = z[:n], dz[:n]
    return _with_direct_rows(_finish(*_probability_sums(z, dz, inv_t)), z, dz, inv_t)


def candidate_metrics(z: torch.Tensor, z2: torch.Tensor, cands: torch.Tensor, temperatures: list[float]) -> dict[str, torch.Tensor]:
    """Multiple-choice view per row: ``[T, rows]`` KL / argmax agreement over the renormalised
    candidates, candidates' mass in q and the best candidate's rank in q (0 = top). NaN where a
    row has no candidates. ``cands`` is [rows, K] token ids padded with -1."""
    rows = z.shape[0]
    nt = len(temperatures)
    out = {k: torch.full((nt, rows), float("nan"), dtype=torch.float64) for k in ("cand_kl", "cand_top1_agree", "cand_mass", "cand_rank")}
    valid = cands >= 0
    has = valid.any(-1)
    if not bool(has.any()):
        return out
    idx = cands.clamp_min(0)
    neg = torch.tensor(float("-inf"), dtype=torch.float64)
    zc = torch.where(valid, z.gather(-1, idx).double(), neg)
    zc2 = torch.where(valid, z2.gather(-1, idx).double(), neg)
    agree = (zc.argmax(-1) == zc2.argmax(-1)).double()
    best2 = zc2.max(-1).values
    rank = (z2 > best2.to(z2.dtype).unsqueeze(-1)).sum(-1).double()
    for k, t in enumerate(temperatures):
        lp = torch.log_softmax(torch.where(valid, zc / t, neg), -1)
        lq = torch.log_softmax(torch.where(valid, zc2 / t, neg), -1)
        kl = torch.where(valid, lp.exp() * (lp - lq), torch.zeros_like(lp)).sum(-1)
        lse2 = torch.logsumexp(z2 * (1.0 / t), -1).double()
        mass = torch.where(valid, (zc2 / t - lse2.unsqueeze(-1)).exp(), torch.zeros_like(zc2)).sum(-1)
        for name, val in (("cand_kl", kl), ("cand_top1_agree", agree), ("cand_mass", mass), ("cand_rank", rank)):
            out[name][k] = torch.where(has, val, torch.full_like(val, float("nan")))
    return out


def row_metrics(
    h: torch.Tensor,
    dh: torch.Tensor,
    z: torch.Tensor,
    z2: torch.Tensor,
    temperatures: list[float],
    candidates: torch.Tensor | None = None,
    compiled: bool = False,
) -> RowMetrics:
    """All metrics for rows of dense ``h`` [R, d], its change ``dh``, dense logits ``z`` and perturbed ``z2`` [R, V].

    ``compiled`` fuses the per-temperature vocab work with ``torch.compile`` (≈10x faster on
    CPU for real vocabularies; the first call compiles; falls back to eager if it cannot).
    """
    rows = h.shape[0]
    nt = len(temperatures)
    ce_h, cp_h, rn_h = vector_metrics(h, dh)
    chunk = max(1, ROW_CHUNK_ELEMENTS // max(1, z.shape[-1]))
    parts_z, parts_p = [], []
    top1 = []
    for lo in range(0, rows, chunk):
        zc = z[lo : lo + chunk]
        zc = zc if zc.dtype in (torch.float32, torch.float64) else zc.float()
        z2c = z2[lo : lo + chunk].to(zc.dtype)
        dz = z2c - zc
        parts_z.append(_vector_metrics_fast(zc, dz))
        per_t = [_probability_chunk(zc, dz, t, chunk, compiled) for t in temperatures]
        parts_p.append({k: torch.stack([d[k] for d in per_t]) for k in per_t[0]})
        top1.append((zc.argmax(-1) == z2c.argmax(-1)).double())
    ce_z, cp_z, rn_z = (torch.cat([p[i] for p in parts_z]) for i in range(3))
    prob = {k: torch.cat([p[k] for p in parts_p], dim=-1) for k in parts_p[0]}

    def spaces(e: torch.Tensor, lg: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
        return torch.stack([e.expand(nt, rows), lg.expand(nt, rows), pr])

    if candidates is None:
        candidates = torch.full((rows, 1), -1, dtype=torch.long)
    cand = candidate_metrics(z, z2, candidates, temperatures)
    return RowMetrics(
        cos_dev=spaces(ce_h, ce_z, prob["cos_dev"]),
        cos_dev_pred=spaces(cp_h, cp_z, prob["cos_dev_pred"]),
        rel_norm=spaces(rn_h, rn_z, prob["rel_norm"]),
        kl=prob["kl"],
        kl_pred=prob["kl_pred"],
        top1_agree=torch.cat(top1),
        **cand,
    )


def _vector_metrics_fast(x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``vector_metrics`` for vocab-sized rows: reductions in the input dtype, scalars in float64."""
    xx, xd, dd = _dot(x, x).double(), _dot(x, dx).double(), _dot(dx, dx).double()
    coef = torch.where(xx > 0, xd / xx, torch.zeros_like(xx))
    perp = dx - coef.to(x.dtype).unsqueeze(-1) * x
    perp_sq = _dot(perp, perp).double()
    norm_x = xx.sqrt()
    par = torch.where(norm_x > 0, xd / norm_x, torch.zeros_like(xd))
    return one_minus_cos(norm_x, par, perp_sq), perp_sq / (2 * xx), dd.sqrt() / norm_x

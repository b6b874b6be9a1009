"""The perturbation metrics per position, measured next to their Taylor predictions.

Rows are positions. For dense ``x`` and perturbed ``x + dx`` (hidden states ``h`` or
logits ``z``), and ``p = softmax(z/T)``, ``q = softmax((z + dz)/T)``:

* measured ``1-cos(x, x+dx)``, ``‖dx‖/‖x‖``, its parallel and orthogonal parts
  ``‖dx∥‖/‖x‖``, ``‖dx⊥‖/‖x‖`` and, in probability space, the same for ``p → q``,
  ``KL(p‖q)``, top-1 agreement;
* predicted ``‖dx⊥‖²/(2‖x‖²)``, ``Var_r(dz)/(2T²)`` with ``r ∝ p²``, ``Var_p(dz)/(2T²)``;
* the paper's other views of ``Δz``: uniform, top-5 and top-10 variance (``/2T²``), mean
  ``|Δz|`` (L1) and root-mean-square ``Δz`` (L2).

Everything is computed from ``dx`` directly (never as a difference of two nearly equal
cosines or log-probabilities), so tiny perturbations keep their relative precision. Vocab-
sized work is one pass (``kernel.SumsKernel``) in the input dtype (at least float32) over
cache-sized row chunks for all temperatures at once; scalars are combined in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelens.probe.vocab_pass import DenseRows, SumsKernel
from prunelens_store.schema import METRICS, SCHEMA


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
    parts = vector_parts(x, dx)
    return parts["cos_dev"], parts["cos_dev_pred"], parts["rel_norm"]


def vector_parts(x: torch.Tensor, dx: torch.Tensor) -> dict[str, torch.Tensor]:
    """1-cos, its prediction, ``‖dx‖/‖x‖``, ``‖dx∥‖/‖x‖`` and ``‖dx⊥‖/‖x‖`` per row (float64), from one set of dots."""
    x = x.double()
    dx = dx.double()
    xx = (x * x).sum(-1)
    xd = (x * dx).sum(-1)
    coef = torch.where(xx > 0, xd / xx, torch.zeros_like(xx))
    perp = dx - coef.unsqueeze(-1) * x
    return _vector_from_sums(xx, xd, (perp * perp).sum(-1), (dx * dx).sum(-1))


def _vector_from_sums(xx: torch.Tensor, xd: torch.Tensor, perp_sq: torch.Tensor,
                      dd: torch.Tensor) -> dict[str, torch.Tensor]:
    """The vector-space metrics from ``Σx², Σx·dx, ‖dx⊥‖², Σdx²`` (float64)."""
    norm_x = xx.sqrt()
    par = torch.where(norm_x > 0, xd / norm_x, torch.zeros_like(xd))
    return {"cos_dev": one_minus_cos(norm_x, par, perp_sq), "cos_dev_pred": perp_sq / (2 * xx),
            "rel_norm": dd.sqrt() / norm_x, "rel_par": par.abs() / norm_x, "rel_perp": perp_sq.sqrt() / norm_x}


# RowMetrics fields are the schema's metrics, shaped like their store dims after (method, unit, locality,
# timing) with (sample, step) flattened to rows: [space, T, rows], [T, rows] or [rows].
SPACE_FIELDS = tuple(name for name in METRICS if "space" in SCHEMA[name].dims)
CAND_FIELDS = tuple(name for name in METRICS if name.startswith("cand_"))


@dataclass
class RowMetrics:
    """Metrics of a set of rows: ``[space, T, rows]``, ``[T, rows]`` and ``[rows]`` float64 tensors."""

    cos_dev: torch.Tensor
    cos_dev_pred: torch.Tensor
    rel_norm: torch.Tensor
    rel_par: torch.Tensor  # ‖Δ∥‖/‖x‖
    rel_perp: torch.Tensor  # ‖Δ⊥‖/‖x‖
    kl: torch.Tensor
    kl_pred: torch.Tensor
    dz_var_uniform: torch.Tensor  # Var over the vocabulary (uniform weights) of Δz, / 2T²
    dz_var_top5: torch.Tensor  # Var of Δz over the dense top-5 tokens, weights p renormalised, / 2T²
    dz_var_top10: torch.Tensor
    top1_agree: torch.Tensor
    dz_l1: torch.Tensor  # mean |Δz| over the vocabulary
    dz_l2: torch.Tensor  # root mean square of Δz
    cand_kl: torch.Tensor
    cand_top1_agree: torch.Tensor
    cand_mass: torch.Tensor
    cand_rank: torch.Tensor

    @classmethod
    def cat(cls, parts: list[RowMetrics]) -> RowMetrics:
        return cls(**{f: torch.cat([getattr(p, f) for p in parts], dim=-1) for f in cls.__dataclass_fields__})


LARGE_B = 30.0  # beyond this exp(b)² may overflow float32: such rows are recomputed directly
DIRECT_CHUNK_BYTES = 1 << 19  # rows recomputed directly go in chunks of ~0.5 MB of float64 per temporary (cache-sized)


def probability_metrics(z: torch.Tensor, dz: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Per row at one temperature: 1-cos(p,q), its prediction, ‖q-p‖/‖p‖, its parallel and
    orthogonal parts, KL(p‖q) and its prediction (float64), eager.

    With ``e = exp((z - max z)/T)`` (so ``p = e/Σe``), ``μ = E_p[dz]`` and ``b = (dz - μ)/T``:
    ``KL = log E_p[e^b] - E_p[b] = log1p(δ + H) - δ`` with ``δ = E_p[b]`` (≈ 0) and
    ``H = E_p[expm1(b) - b]`` (all terms O(b²), ``expm1(b) - b`` from its series for small b);
    ``q - p = p (g - m)/(1 + m)`` with ``g = expm1(b)``, ``m = E_p[g]``.
    """
    zf = z if z.dtype in (torch.float32, torch.float64) else z.float()
    dense = DenseRows.of(zf, [temperature])
    per, _ = SumsKernel("eager")(dense, zf + dz.to(zf.dtype))
    out = _probability_from_sums(dense, per, zf, zf + dz.to(zf.dtype))
    return {k: v[0] for k, v in out.items()}


def _probability_from_sums(dense: DenseRows, per: torch.Tensor, z: torch.Tensor,
                           z2: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[T, rows]`` probability-space metrics from the kernel's per-temperature sums (float64);
    rows with a large or non-finite result are recomputed directly from p and q."""
    sd, sw, eb, eh, ebb, wb, wbb, wg, wgg, bmax = (x.double() for x in per)
    delta, h_mean, var_p = eb / sd, eh / sd, ebb / sd
    m = delta + h_mean
    kl = (torch.log1p(m) - delta).clamp_min(0)  # ≥ 0 as the true KL (rounding can dip below at KL ~ 1e-20)
    kl_pred = (var_p - delta * delta).clamp_min(0) / 2
    # d = g - m: Σw d = Σwg - mΣw, Σw d² = Σwg² - 2mΣwg + m²Σw
    swd = wg - m * sw
    swdd = wgg - 2 * m * wg + m * m * sw
    # p = e/s, so Σp² = sw/s², p·Δp = Σw d/(s²(1+m)), ‖Δp‖² = Σw d²/(s²(1+m)²)
    pp = sw / (sd * sd)
    p_dp = swd / (sd * sd * (1 + m))
    dpdp = (swdd / (sd * sd * (1 + m) ** 2)).clamp_min(0)
    perp_sq = (dpdp - p_dp * p_dp / pp).clamp_min(0)
    # own storage: rows may be replaced
    out = {k: v.clone() for k, v in _vector_from_sums(pp, p_dp, perp_sq, dpdp).items()}
    r_mean = wb / sw
    out["cos_dev_pred"] = (wbb / sw - r_mean * r_mean) / 2
    out["kl"], out["kl_pred"] = kl, kl_pred
    bad = (bmax > LARGE_B) | ~torch.isfinite(kl) | ~torch.isfinite(out["cos_dev"])
    if bool(bad.any()):
        for k, t in enumerate(dense.inv_t.tolist()):
            bad_rows = bad[k].nonzero().view(-1)
            # float64 temporaries stay in cache: 4x faster than 8 MB
            step = max(1, DIRECT_CHUNK_BYTES // (8 * z.shape[-1]))
            for lo in range(0, bad_rows.numel(), step):
                idx = bad_rows[lo : lo + step]
                direct = _probability_direct(z[idx], z2[idx] - z[idx], t)
                for name in out:
                    out[name][k, idx] = direct[name]
    return out


def _probability_direct(z: torch.Tensor, dz: torch.Tensor, inv_t: float) -> dict[str, torch.Tensor]:
    """The same metrics from p and q themselves: exact for large perturbations (no small-Δ expansions)."""
    z, dz = z.double(), dz.double()
    lp, lq = torch.log_softmax(z * inv_t, -1), torch.log_softmax((z + dz) * inv_t, -1)
    p, q = lp.exp(), lq.exp()
    out = vector_parts(p, q - p)
    mu = (p * dz).sum(-1, keepdim=True)
    b = (dz - mu) * inv_t
    r = p * p / (p * p).sum(-1, keepdim=True)
    br = b - (r * b).sum(-1, keepdim=True)
    out.update(cos_dev_pred=(r * br * br).sum(-1) / 2, kl=(p * (lp - lq)).sum(-1).clamp_min(0),
               kl_pred=(p * b * b).sum(-1) / 2)
    return out


def candidate_metrics(z: torch.Tensor, z2: torch.Tensor, cands: torch.Tensor,
                      temperatures: list[float]) -> dict[str, torch.Tensor]:
    """Multiple-choice view per row: ``[T, rows]`` KL / argmax agreement over the renormalised
    candidates, candidates' mass in q and the best candidate's rank in q (0 = top). NaN where a
    row has no candidates. ``cands`` is [rows, K] token ids padded with -1."""
    rows = z.shape[0]
    nt = len(temperatures)
    out = {k: torch.full((nt, rows), float("nan"), dtype=torch.float64, device=z.device) for k in CAND_FIELDS}
    cands = cands.to(z.device)
    valid = cands >= 0
    has = valid.any(-1)
    if not bool(has.any()):
        return out
    idx = cands.clamp_min(0)
    neg = torch.tensor(float("-inf"), dtype=torch.float64, device=z.device)
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


def topk_variance(dense: DenseRows, z2: torch.Tensor, k: int) -> torch.Tensor:
    """``[T, rows]`` Var of Δz over the dense top-k tokens, weights p renormalised over them, / 2T² (float64)."""
    idx = dense.top[:, :k]
    zt = dense.z.gather(-1, idx).double()
    dzt = z2.gather(-1, idx).double() - zt
    out = []
    for t in dense.inv_t.double().tolist():
        w = torch.softmax(zt * t, -1)
        mu = (w * dzt).sum(-1, keepdim=True)
        out.append((w * (dzt - mu) ** 2).sum(-1) * (t * t / 2))
    return torch.stack(out)


_KERNELS: dict[str, SumsKernel] = {}


def _kernel_for(compiled: bool | None) -> SumsKernel:
    mode = "auto" if compiled is None else ("compiled" if compiled else "eager")
    return _KERNELS.setdefault(mode, SumsKernel(mode))


def row_metrics(
    h: torch.Tensor,
    dh: torch.Tensor,
    z: torch.Tensor,
    z2: torch.Tensor,
    temperatures: list[float],
    candidates: torch.Tensor | None = None,
    compiled: bool | None = False,
    dense: DenseRows | None = None,
    kernel: SumsKernel | None = None,
) -> RowMetrics:
    """All metrics for rows of dense ``h`` [R, d], its change ``dh``, dense logits ``z`` and perturbed ``z2`` [R, V].

    ``h``/``dh`` may sit on a layer's device and ``z``/``z2`` on the LM head's: every result is on ``z``'s
    device (the hidden-state metrics and the candidates are moved there explicitly).

    ``dense`` (``DenseRows.of(z, temperatures)``) shares the dense side between calls on the
    same rows; ``kernel`` runs the vocabulary pass (default: one per mode, ``compiled`` True =
    the kept compiled kernel, False = eager, None = auto). Vocab-sized work is in the input dtype
    (at least float32) over cache-sized chunks, all temperatures in one pass.
    """
    rows = h.shape[0]
    nt = len(temperatures)
    if dense is None:
        dense = DenseRows.of(z, temperatures)
    z = dense.z
    z2 = z2.to(device=z.device, dtype=z.dtype)  # a no-op when both match
    per, once = (kernel or _kernel_for(compiled))(dense, z2)
    vocab = z.shape[-1]
    zdz, dzsum, perp_sq, uvar, l1, dd, argmax2 = (x.double() for x in once)
    emb = {k: v.to(z.device) for k, v in vector_parts(h, dh).items()}  # hidden rows may sit on another device
    logit = _vector_from_sums(dense.zz.double(), zdz, perp_sq, dd)
    prob = _probability_from_sums(dense, per, z, z2)
    half_t2 = dense.inv_t.double().pow(2).unsqueeze(-1) / 2

    def spaces(name: str) -> torch.Tensor:
        return torch.stack([emb[name].expand(nt, rows), logit[name].expand(nt, rows), prob[name]])

    if candidates is None:
        candidates = torch.full((rows, 1), -1, dtype=torch.long, device=z.device)
    cand = candidate_metrics(z, z2, candidates, temperatures)
    return RowMetrics(
        **{name: spaces(name) for name in SPACE_FIELDS},
        kl=prob["kl"],
        kl_pred=prob["kl_pred"],
        dz_var_uniform=(uvar / vocab) * half_t2,
        dz_var_top5=topk_variance(dense, z2, 5),
        dz_var_top10=topk_variance(dense, z2, 10),
        top1_agree=(argmax2.long() == dense.argmax).double(),
        dz_l1=l1 / vocab,
        dz_l2=(dd / vocab).sqrt(),
        **cand,
    )

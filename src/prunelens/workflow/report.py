"""A Markdown report with PNG plots for a probe store (and optionally a plan and task results).

Plots (matplotlib, Agg): 1-cos per layer in the three spaces (measured and predicted),
predicted vs measured KL per unit, step-wise divergence of the safest and riskiest units.
Then the ranking table, the plan with predicted vs measured KL, and the task table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prunelens.errors import PrunelensError

COLORS = {"embedding": "tab:blue", "logit": "tab:orange", "probability": "tab:red"}
KIND_MARKERS = {"block": "s", "attn": "o", "mlp": "^"}


def _mean_over(a: Any, dims: tuple[str, ...]) -> Any:
    import numpy as np

    return np.asarray(a.astype("float64").mean(dim=[d for d in dims if d in a.dims], skipna=True).values)


def plot_cos_curves(ds: Any, path: Path, *, method: str, locality: str, timing: str, temperature: float) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    from prunelens_store import StoreView
    from prunelens_store.schema import SPACES

    view = StoreView.of(ds)
    kinds = [k for k in ("block", "attn", "mlp") if k in set(map(str, ds["kind"].values))]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        picked = np.nonzero(np.asarray(ds["kind"].values) == kind)[0]
        units = [str(u) for u in ds["unit"].values[picked]]
        layers = np.asarray(ds["layer"].values[picked])
        cell = {"method": method, "temperature": temperature, "locality": locality, "timing": timing, "units": units}
        for space in SPACES:
            meas = view.unit_means("cos_dev", space=space, **cell)
            pred = view.unit_means("cos_dev_pred", space=space, **cell)
            ax.plot(layers, meas, "-o", ms=3, color=COLORS[space], label=f"{space} measured")
            ax.plot(layers, pred, "--", color=COLORS[space], alpha=0.7, label=f"{space} predicted")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(f"{kind} · {_plot_text(method)}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean 1 − cos")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"1 − cos per layer in three spaces ({locality}, {timing}, T={temperature:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_kl_scatter(df: Any, path: Path, *, title: str, plan_units: list[str] | None = None) -> tuple[Path, float]:
    import matplotlib.pyplot as plt
    import numpy as np

    from prunelens_store import spearman

    fig, ax = plt.subplots(figsize=(5.5, 5))
    rho = spearman(df["kl_pred"].to_numpy(float), df["kl"].to_numpy(float))
    for kind, sub in df.groupby("kind"):
        ax.scatter(sub["kl_pred"], sub["kl"], s=22, marker=KIND_MARKERS.get(kind, "o"), label=kind, alpha=0.8)
    if plan_units:
        sub = df[df["unit"].isin(plan_units)]
        ax.scatter(sub["kl_pred"], sub["kl"], s=90, facecolors="none", edgecolors="k", label="in plan")
    vals = np.concatenate([df["kl_pred"].to_numpy(float), df["kl"].to_numpy(float)])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if len(vals):
        lo, hi = vals.min() / 2, vals.max() * 2
        ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("predicted KL  Var_p(Δz)/(2T²)")
    ax.set_ylabel("measured KL(p_dense ‖ q)")
    ax.set_title(f"{title}\nSpearman ρ = {rho:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rho


def plot_steps(ds: Any, df: Any, path: Path, *, method: str, locality: str, temperature: float, n: int = 4) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    from prunelens_store import StoreView

    ranked = df[df["rank"].notna()]
    chosen = list(ranked["unit"].head(n)) + [u for u in ranked["unit"].tail(n) if u not in set(ranked["unit"].head(n))]
    timings = [str(t) for t in ds["timing"].values]
    fig, axes = plt.subplots(1, len(timings), figsize=(5.5 * len(timings), 4), squeeze=False)
    for ax, timing in zip(axes[0], timings):
        kl = StoreView.of(ds).cell("kl", method=method, locality=locality, timing=timing, temperature=temperature)
        for k, unit in enumerate(chosen):
            curve = _mean_over(kl.sel(unit=unit), ("sample",))
            if not np.isfinite(curve).any():
                continue
            style = "-" if k < n else "--"
            ax.plot(np.arange(len(curve)), curve, style, label=f"{unit} ({'safe' if k < n else 'risky'})")
        ax.set_yscale("log")
        ax.set_xlabel("decoding step")
        ax.set_ylabel("mean KL(p‖q)")
        ax.set_title(f"{timing} · {locality} · T={temperature:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("step-wise divergence: the safest and the riskiest units")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_text(text: Any) -> str:
    """A store string for a matplotlib title: no control characters, ``$`` not read as mathtext."""
    from prunelens.safe_text import clean

    return clean(text).replace("$", r"\$")


def _md(text: Any) -> str:
    from prunelens.safe_text import md

    return md(text)


def _code(text: Any) -> str:
    from prunelens.safe_text import md_code

    return md_code(text)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(v: Any, digits: int = 3) -> str:
    """A number for tables: scientific when tiny or huge, '-' when missing or not finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(f):
        return "-"
    return f"{f:.{digits}e}" if f != 0 and (abs(f) < 1e-2 or abs(f) >= 1e4) else f"{f:.{digits + 1}g}"


def rank_label(v: Any) -> str:
    """A rank for tables; '-' for none (None, NaN or pandas' NA, whose truth value is an error)."""
    import pandas as pd

    return "-" if v is None or bool(pd.isna(v)) else str(int(v))


def write_report(ds: Any, out_dir: str | Path, *, method: str | None = None, kind: str | None = None,
                 temperature: float | None = None, locality: str = "propagated", timing: str = "teacher_forced",
                 by: str = "kl_pred", plan: Any = None, eval_results: dict | None = None,
                 store_path: str | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir``; returns the Markdown path.

    Every method of the store is reported side by side (a comparison table, then plots and a
    ranking per method); ``method`` narrows it to one. One method keeps the plain file names
    (``cos_curves.png``...); several add the method to each (``cos_curves-wanda.png``). A plan
    whose method is not among the reported ones is flagged.
    """
    import matplotlib

    from prunelens.plan.ranking import resolve_method
    from prunelens_store import StoreView

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        temperature = plan.temperature if temperature is None else temperature
    methods = [resolve_method(ds, method)] if method is not None else [str(v) for v in ds["method"].values]
    view = StoreView.of(ds)
    temps = view.temperatures
    temperature = view.temperature(temperature, exact=temperature is not None)  # None: 1.0 or the nearest
    view.check_label("locality", locality)
    suffixes = _file_suffixes(methods)
    plan_labels = _plan_labels(ds, plan) if plan is not None else {}
    sections = [_method_section(ds, out, m, suffixes[m], kind=kind, temperature=temperature, locality=locality,
                                timing=timing, by=by, plan_labels=plan_labels) for m in methods]
    a = ds.attrs
    # every string from the store, a plan or the command line goes through md()/md_code(): no escapes, no markup
    md = [f"# prunelens report: {_md(a.get('model_id', '?'))}", ""]
    md += [f"- store: {_code(store_path or '?')} · config hash {_code(a.get('config_hash', '?'))} · readout "
           f"{_code(a.get('readout', '?'))} · {_md(a.get('kl_convention', 'KL(p_dense || q_perturbed)'))}",
           f"- {ds.sizes.get('sample', '?')} samples × {ds.sizes.get('step', '?')} steps · temperatures "
           f"{', '.join(f'{t:g}' for t in temps)} · method{'s' if len(methods) > 1 else ''} "
           f"{', '.join(_code(m) for m in methods)}",
           f"- ranking: by {_code(by)}, {locality}, {timing}, T = {temperature:g}, kind = {kind or 'all'}"]
    if len(methods) == 1:
        md += [f"- Spearman ρ(predicted KL, measured KL) across {sections[0]['finite']} units: "
               f"**{sections[0]['rho']:.3f}**"]
    md += [f"- non-finite cells in the store: **{int(a.get('nonfinite_cells', 0) or 0)}**"
           f" ({int(a.get('nonfinite_values', 0) or 0)} values)", ""]
    if len(methods) > 1:
        md += _comparison_section(sections, by)
    for sec in sections:
        md += sec["md"]
    if plan is not None:
        md += _plan_section(plan, methods, plan_labels)
    results = dict(eval_results or {})
    if plan is not None and plan.eval and not results:
        results = plan.eval
    if results:
        md += _task_section(results)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def _file_suffixes(methods: list[str]) -> dict[str, str]:
    """'' for one method; else a file-name-safe, unique ``-label`` per method."""
    import re

    if len(methods) == 1:
        return {methods[0]: ""}
    out: dict[str, str] = {}
    for m in methods:
        base = "-" + (re.sub(r"[^A-Za-z0-9.]+", "-", m).strip("-.") or "method")
        slug, k = base, 2
        while slug in out.values():
            slug, k = f"{base}-{k}", k + 1
        out[m] = slug
    return out


def _plan_labels(ds: Any, plan: Any) -> dict[str, str | None]:
    """Each plan unit -> the store's label of its method (None: the store does not have it)."""
    from prunelens.plan.ranking import resolve_method

    found: dict[str, str | None] = {}
    for unit, spec in plan.unit_methods():
        try:
            found[unit.name] = resolve_method(ds, spec)
        except PrunelensError:
            found[unit.name] = None
    return found


def _method_section(ds: Any, out: Path, method: str, suffix: str, *, kind: str | None, temperature: float,
                    locality: str, timing: str, by: str, plan_labels: dict[str, str | None]) -> dict:
    """One method's plots, ranking table and headline numbers (``md`` lines and the comparison row's values)."""
    import numpy as np

    from prunelens.plan.ranking import nonfinite_note, rank_units

    df = rank_units(ds, method=method, kind=kind, temperature=temperature, by=by, locality=locality, timing=timing)
    plan_units = [u for u, label in plan_labels.items() if label == method] or None
    cos_png = plot_cos_curves(ds, out / f"cos_curves{suffix}.png", method=method, locality=locality, timing=timing,
                              temperature=temperature)
    scatter_png, rho = plot_kl_scatter(df, out / f"kl_scatter{suffix}.png", plan_units=plan_units,
                                       title=f"{_plot_text(method)} · {kind or 'all units'} · {locality}/{timing} · "
                                             f"T={temperature:g}")
    steps_png = plot_steps(ds, df, out / f"steps{suffix}.png", method=method, locality=locality,
                           temperature=temperature)
    level = "###" if suffix else "##"
    md = [f"## Method {_code(method)}", ""] if suffix else []
    note = nonfinite_note(ds, df)
    if note:
        md += [f"> **Warning:** {_md(note)}", ""]
    md += [f"{level} 1 − cos per layer in three spaces", "",
           "Solid: measured; dashed: the Taylor prediction. Embedding and logit deviations stay small while the "
           "probability deviation (temperature-dependent) is what generation feels.", "",
           f"![1-cos per layer]({cos_png.name})", ""]
    md += [f"{level} Predicted vs measured KL", "", f"![predicted vs measured KL]({scatter_png.name})", ""]
    md += [f"{level} Step-wise divergence", "", f"![step-wise divergence]({steps_png.name})", ""]
    md += [f"{level} Ranking (safest first)", ""]
    rows = [[rank_label(r["rank"]), _md(r["unit"]), fmt(r["score"]),
             fmt(r["kl_pred"]), fmt(r["kl"]), fmt(r["cos_dev_embedding"]), fmt(r["cos_dev_logit"]),
             fmt(r["cos_dev_probability"])] for _, r in df.iterrows()]
    md += [_md_table(["rank", "unit", f"score ({by})", "predicted KL", "measured KL", "1-cos emb", "1-cos logit",
                      "1-cos prob"], rows), ""]
    ranked = df[df["rank"].notna()]
    kl, kl_pred = df["kl"].to_numpy(float), df["kl_pred"].to_numpy(float)
    return {"method": method, "md": md, "rho": rho, "finite": int(np.isfinite(kl).sum()), "units": len(ranked),
            "kl_pred": float(np.nanmean(kl_pred)) if np.isfinite(kl_pred).any() else None,
            "kl": float(np.nanmean(kl)) if np.isfinite(kl).any() else None,
            "safest": str(ranked["unit"].iloc[0]) if len(ranked) else "-",
            "riskiest": str(ranked["unit"].iloc[-1]) if len(ranked) else "-"}


def _comparison_section(sections: list[dict], by: str) -> list[str]:
    """The methods side by side: how well the Taylor prediction ranks each, and how much each costs."""
    rows = [[_code(s["method"]), str(s["units"]), f"{s['rho']:.3f}" if math.isfinite(s["rho"]) else "-",
             fmt(s["kl_pred"]), fmt(s["kl"]), _md(s["safest"]), _md(s["riskiest"])] for s in sections]
    return ["## Methods side by side", "",
            f"Per method: units ranked (by {_code(by)}), Spearman ρ between predicted and measured KL across its "
            "units, the mean predicted and measured KL of one unit, and its safest and riskiest unit. Each method's "
            "plots and ranking follow.", "",
            _md_table(["method", "units", "Spearman ρ", "mean predicted KL", "mean measured KL", "safest",
                       "riskiest"], rows), ""]


def _plan_section(plan: Any, methods: list[str] | None = None, plan_labels: dict[str, str | None] | None = None
                  ) -> list[str]:
    """The plan's units and predicted vs measured KL; flagged when its method is not among ``methods``."""
    md = ["## Plan", "",
          f"{_code(plan.method)} on {len(plan.units)} unit(s) chosen by {_code(plan.strategy)}"
          f"{' (iterative)' if plan.iterative else ''} at T = {float(plan.temperature):g}, "
          f"budget {_md(plan.budget)}.", ""]
    other = [] if methods is None or plan_labels is None else \
        sorted({spec for (u, spec) in plan.unit_methods() if plan_labels.get(u.name) not in methods})
    if methods and other:
        many = len(other) > 1
        md += [f"> **Warning:** the plan's method{'s' if many else ''} {', '.join(_code(o) for o in other)} "
               f"{'are' if many else 'is'} not among the reported method{'s' if len(methods) > 1 else ''} "
               f"({', '.join(_code(m) for m in methods)}): the plots and rankings above do not describe "
               f"{'them' if many else 'it'}.", ""]
    mixed = plan.is_mixed
    rows = [[str(i), _md(u.unit), *([_code(u.method or plan.method)] if mixed else []), fmt(u.predicted_kl),
             fmt(u.cumulative_predicted_kl), fmt(u.cumulative_measured_kl)]
            for i, u in enumerate(plan.units, 1)]
    md += [_md_table(["#", "unit", *(["method"] if mixed else []), "predicted KL", "Σ predicted KL",
                      "measured KL (units 1..k applied)"], rows), ""]
    if plan.measured_kl_total is not None:
        pred = plan.predicted_kl_total
        ratio = plan.measured_kl_total / pred if pred else float("nan")
        agree = plan.measured.get("top1_agree")
        md += [f"Whole plan: predicted KL (sum of single-unit predictions) **{fmt(pred)}**, measured KL "
               f"**{fmt(plan.measured_kl_total)}** (ratio {fmt(ratio)})"
               + (f", top-1 agreement {fmt(agree)}" if agree is not None else "") + " on the store's prompts.", ""]
    else:
        md += ["Not validated: `prunelens validate PLAN --write` measures it and records the measured KL and top-1 "
               "agreement in the plan.", ""]
    return md


def _task_section(results: dict) -> list[str]:
    """``results``: anything ``prunelens.evaluation.results.read_results`` reads (what ``eval --json`` writes,
    {model label: record}, {model label: {task: {metric: value}}} or {task: {metric: value}})."""
    from prunelens.evaluation.results import read_results

    by_model = read_results(results)
    cols = sorted({(t, m) for res in by_model.values() for t, ms in res.items() for m in ms})
    header = ["model"] + [_md(f"{t}.{m}") for t, m in cols]
    rows = [[_md(label)] + [fmt(res.get(t, {}).get(m)) for t, m in cols] for label, res in by_model.items()]
    return ["## Tasks", "", _md_table(header, rows), ""]

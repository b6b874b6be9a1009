"""Tables and JSON shapes of the pipeline's results: rankings, plans, validations, evaluations, probe summaries.

Each builder takes plain results (a ranking DataFrame, a ``Plan``, validation rows, task
results, a probe store) and returns a ``rich`` table or a JSON-ready dict; the caller prints it.
Text from stores, plans and plugins is escaped (``safe_text.esc``): it is shown, never parsed as markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunelens.safe_text import esc
from prunelens.workflow.report import fmt, rank_label

if TYPE_CHECKING:
    from rich.table import Table

RANK_COLUMNS = (("predicted KL", "kl_pred"), ("measured KL", "kl"), ("1-cos emb", "cos_dev_embedding"),
                ("1-cos logit", "cos_dev_logit"), ("1-cos prob", "cos_dev_probability"))
RANK_JSON_FIELDS = ("rank", "unit", "layer", "kind", "score", "kl_pred", "kl", "cos_dev_embedding", "cos_dev_logit",
                    "cos_dev_probability")


# -- rankings ------------------------------------------------------------------------------------
def ranking_table(df: Any, title: str = "") -> Table:
    """Units safest first with every store metric beside (a ``score`` column when ranked by another strategy)."""
    from rich.table import Table

    by = df.attrs.get("by", "kl_pred")
    own_score = by not in ("kl_pred", "kl")
    table = Table(title=title, title_justify="left")  # the caller escapes the title
    table.add_column("rank", justify="right")
    table.add_column("unit", justify="left")
    if own_score:
        table.add_column(f"score ({by})", justify="right")
    for label, _ in RANK_COLUMNS:
        table.add_column(label, justify="right")
    for _, r in df.iterrows():
        cells = [rank_label(r["rank"]), esc(r["unit"])] + ([fmt(r["score"])] if own_score else [])
        table.add_row(*cells, *[fmt(r[col]) for _, col in RANK_COLUMNS])
    return table


def ranking_title(df: Any, *, kind: str, temperature: float, by: str, locality: str, timing: str) -> str:
    """The ``prunelens rank`` table title (escaped)."""
    return (f"{esc(df.attrs['method'])} · {kind} · T={temperature:g} · by {by} · {locality}/{timing} "
            "(means over samples and steps; KL = KL(p_dense‖q))")


def ranking_json(df: Any, *, store: str, kind: str) -> dict:
    """``rank --json``: the ranking's settings and one object per unit (safest first; null = not measured)."""
    a = df.attrs
    return {"store": str(store), "method": a.get("method"), "kind": kind, "temperature": a.get("temperature"),
            "by": a.get("by"), "locality": a.get("locality"), "timing": a.get("timing"),
            "units": [{k: r[k] for k in RANK_JSON_FIELDS} for _, r in df.iterrows()]}


# -- plans and their validation -------------------------------------------------------------------
def plan_table(plan: Any) -> Table:
    """The units a plan chose, in order, with predicted KL (a method column for allocated plans)."""
    from rich.table import Table

    t = Table(title=f"plan: {esc(plan.method)} · {esc(plan.strategy)}{' (iterative)' if plan.iterative else ''} · "
                    f"T={plan.temperature:g} · budget {plan.budget}", title_justify="left")
    if plan.allocation:
        t.add_column("method", justify="left")
    cols: tuple[str, ...] = ("#", "unit", "score", "predicted KL", "cumulative predicted KL", "params")
    if plan.allocation:  # allocators give no ranking score; params = the unit's decoder linear weights
        cols = ("#", "unit", "predicted KL", "cumulative predicted KL", "linear weights")
    for col in cols:
        t.add_column(col, justify="left" if col == "unit" else "right")
    for i, u in enumerate(plan.units, 1):
        cells = [str(i), esc(u.unit), *([] if plan.allocation else [fmt(u.score)]), fmt(u.predicted_kl),
                 fmt(u.cumulative_predicted_kl), "-" if u.params is None else f"{u.params:,}"]
        t.add_row(*([esc(u.method or plan.method)] if plan.allocation else []), *cells)
    return t


def allocation_line(plan: Any) -> str | None:
    """What an allocated plan reached against its budget (None for a ranked plan)."""
    a = plan.allocation
    if not a:
        return None
    return (f"budget {a['budget']}: reached {a['achieved']:.6g}; decoder linear weights zeroed or removed "
            f"{a['decoder_linear_sparsity']:.1%}"
            + (f"; optimality gap {a['gap']:.3g} (lower bound {a['lower_bound']:.6g})" if "gap" in a else ""))


def validation_table(plan: Any, rows: list[dict]) -> Table:
    """Predicted vs measured KL, one row per prefix of the plan (units 1..k applied together)."""
    from rich.table import Table

    t = Table(title=f"predicted vs measured KL(p_dense‖q) · {plan.method} · T={plan.temperature:g} · "
                    "store prompts, teacher-forced, at the output", title_justify="left",
              caption="row k: units 1..k applied together; pred KL: the unit alone (store); Σ pred: sum so far; "
                      "Taylor(set): Var_p(Δz)/(2T²) of the set", caption_justify="left")
    for col in ("k", "unit", "pred KL", "Σ pred KL", "measured KL", "meas/Σpred", "Taylor(set)", "top-1"):
        t.add_column(col, justify="left" if col == "unit" else "right", no_wrap=True)
    for r in rows:
        pred, meas = r["cumulative_predicted_kl"], r["measured_kl"]
        ratio = meas / pred if pred else None
        t.add_row(str(r["k"]), r["unit"], fmt(r["predicted_kl"]), fmt(pred), fmt(meas), fmt(ratio),
                  fmt(r["taylor_kl_of_set"]), f"{r['top1_agree']:.3f}")
    return t


def validation_json(plan: Any, rows: list[dict], *, plan_path: str, store: str, checkpoint: str | None) -> dict:
    """``validate --json``: the plan's totals and the validation rows."""
    return {"plan": str(plan_path), "store": str(store), "checkpoint": checkpoint, "method": plan.method,
            "temperature": plan.temperature, "predicted_kl_total": plan.predicted_kl_total,
            "measured_kl_total": plan.measured_kl_total, "measured": plan.measured, "rows": rows}


# -- evaluation -----------------------------------------------------------------------------------
def eval_table(results: dict[str, dict[str, float]], timings: dict[str, float]) -> Table:
    """One model's task results: task, metric, value, seconds (counts as integers)."""
    from rich.table import Table

    table = Table("task", "metric", "value", "seconds")
    for task, metrics in results.items():
        for i, (metric, value) in enumerate(metrics.items()):
            shown = f"{value:.0f}" if metric in ("n", "tokens") else f"{value:.4f}"
            table.add_row(task if i == 0 else "", metric, shown, f"{timings.get(task, 0):.1f}" if i == 0 else "")
    return table


def eval_comparison_table(results: dict[str, dict[str, dict[str, float]]]) -> Table:
    """Several models' task results side by side: one row per task metric, one column per model."""
    from rich.table import Table

    rows = sorted({(t, m) for r in results.values() for t, ms in r.items() for m in ms if m not in ("n", "tokens")})
    table = Table("task", "metric", *results, title="tasks (dense vs applied plan)", title_justify="left")
    for t, m in rows:
        table.add_row(t, m, *[("-" if m not in r.get(t, {}) else f"{r[t][m]:.4g}") for r in results.values()])
    return table


# -- probe summary ----------------------------------------------------------------------------------
_SHORT = {"teacher_forced": "forced", "free_running": "free", "propagated": "prop.", "local": "local"}


def probe_summary_table(ds: Any, spearman: dict) -> Table:
    """Means over units, samples and steps per method / locality / timing / T, and Spearman(pred, measured KL).

    ``spearman``: method -> locality -> timing -> T label -> rho, as the store's attribute holds it.
    """
    from rich.table import Table

    means = {v: ds[v].mean(dim=("unit", "sample", "step"), skipna=True).compute()
             for v in ("cos_dev", "kl", "kl_pred", "top1_agree")}
    table = Table(title="means over units, samples and steps", title_justify="left")
    for col in ("method", "where", "timing", "T", "1-cos h", "1-cos z", "1-cos p", "KL", "KL pred", "top-1",
                "ρ(pred,KL)"):
        table.add_column(col, justify="left" if col in ("method", "where", "timing") else "right")
    for m in ds["method"].values:
        for loc in ds["locality"].values:
            for tim in ds["timing"].values:
                sel = {"method": m, "locality": loc, "timing": tim}
                cos = means["cos_dev"].sel(sel)
                for k, t in enumerate(ds["temperature"].values):
                    r = spearman.get(str(m), {}).get(str(loc), {}).get(str(tim), {}).get(f"{float(t):g}")
                    first = k == 0
                    table.add_row(
                        esc(m) if first else "", _SHORT.get(str(loc), str(loc)) if first else "",
                        _SHORT.get(str(tim), str(tim)) if first else "", f"{float(t):g}",
                        f"{float(cos.sel(space='embedding').isel(temperature=k)):.2e}" if first else "",
                        f"{float(cos.sel(space='logit').isel(temperature=k)):.2e}" if first else "",
                        f"{float(cos.sel(space='probability').isel(temperature=k)):.2e}",
                        f"{float(means['kl'].sel(sel).isel(temperature=k)):.2e}",
                        f"{float(means['kl_pred'].sel(sel).isel(temperature=k)):.2e}",
                        f"{float(means['top1_agree'].sel(sel)):.3f}" if first else "",
                        "-" if r is None else f"{r:.3f}",
                    )
    return table


def probe_summary_line(path: str, attrs: dict) -> str:
    """Cells done, non-finite cells and completeness of a probe run (escaped)."""
    return (f"{esc(path)}: {attrs.get('cells_done')}/{attrs.get('cells_total')} cells, "
            f"non-finite cells: {attrs.get('nonfinite_cells', 0)}, complete: {attrs.get('complete')}. "
            "ρ = Spearman across units of mean predicted vs measured KL.")

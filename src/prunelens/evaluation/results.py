"""The one schema of evaluation results on disk, shaped like lm-evaluation-harness's.

``prunelens eval --json`` writes it (``results_record``) and ``prunelens report --eval``
reads it (``read_results``); both go through this module only. A record::

    {
      "results":  {"mc_nextline": {"alias": "mc_nextline", "acc,none": 0.31, "acc_stderr,none": 0.046,
                                   "acc_norm,none": 0.29, "acc_norm_stderr,none": 0.045}, ...},
      "n-samples": {"mc_nextline": {"original": 100, "effective": 100}},
      "versions": {"mc_nextline": "1"},
      "configs":  {"mc_nextline": {"task": "mc_nextline", "spec": "mc_nextline", "n_samples": 100, ...}},
      "higher_is_better": {"mc_nextline": {"acc": true, "acc_norm": true}},
      "config":   {"model": "out/pruned", "model_args": "pretrained=out/pruned,dtype=float32", "device": "cpu", ...},
      "samples":  {"mc_nextline": [{"doc_id": 0, "target": 2, "resps": [...], "acc": 1.0}, ...]},   (--log-samples)
      "prunelens_version": "0.1.0", "transformers_version": "...", "torch_version": "...",
      "date": 1790000000.0, "total_evaluation_time_seconds": "12.3", "seconds": {"mc_nextline": 4.1}
    }

Metric keys are ``"<metric>,<filter>"`` with lm-eval's default filter ``none``; a task's
item count is the integer ``n-samples``, not a metric. ``read_results`` also accepts the
older prunelens files (``{"results": {task: {metric: value}}}``), bare ``{task: {metric: value}}``
and several models side by side (``{label: record}``, as ``eval.json`` of ``prunelens demo``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunelens.errors import PrunelensError
from prunelens.fileio import read_json

FILTER = "none"  # lm-eval's default filter name
COUNT_METRICS = ("n",)  # item counts: go to n-samples, not to results
NOT_METRICS = ("alias", "sample_len")  # keys of lm-eval's result rows that are not metrics
LOWER_IS_BETTER = {"ppl", "nll", "word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity",
                   "first_divergence", "mean_new_tokens"}


def metric_key(metric: str, filter_name: str = FILTER) -> str:
    """``acc`` -> ``acc,none``; ``acc_stderr`` -> ``acc_stderr,none`` (lm-eval's naming)."""
    return metric if "," in metric else f"{metric},{filter_name}"


def plain_metric(key: str) -> str:
    """``acc,none`` -> ``acc`` (the filter dropped); other keys unchanged."""
    return key.split(",", 1)[0]


def results_record(tasks: list[Any], results: Mapping[str, Mapping[str, float]], *, model: str,
                   config: Mapping[str, Any] | None = None, seconds: Mapping[str, float] | None = None,
                   samples: Mapping[str, list[dict]] | None = None) -> dict[str, Any]:
    """``run_tasks`` output (+ the ``Task`` objects run) -> an lm-eval-shaped record."""
    by_key = {t.name if sum(u.name == t.name for u in tasks) == 1 else t.spec: t for t in tasks}
    rec: dict[str, Any] = {"results": {}, "n-samples": {}, "versions": {}, "configs": {}, "higher_is_better": {}}
    for name, metrics in results.items():
        task = by_key.get(name)
        row: dict[str, Any] = {"alias": name}
        for metric, value in metrics.items():
            if metric in COUNT_METRICS:
                n = int(round(float(value)))
                rec["n-samples"][name] = {"original": n, "effective": n}
            else:
                row[metric_key(metric)] = float(value)
        rec["results"][name] = row
        rec["versions"][name] = str(getattr(task, "version", "1"))
        cfg: dict[str, Any] = {"task": name.split(":", 1)[0]}
        if task is not None:
            cfg["spec"] = task.spec
            cfg.update(task.values)
            cfg["description"] = type(task).description
        rec["configs"][name] = cfg
        rec["higher_is_better"][name] = {m: m not in LOWER_IS_BETTER for m in metrics
                                         if m not in COUNT_METRICS and not m.endswith("_stderr")}
    rec["config"] = {"model": model, **dict(config or {})}
    if samples:
        rec["samples"] = {k: v for k, v in samples.items() if v}
    rec.update(_versions())
    rec["date"] = time.time()
    if seconds is not None:
        rec["seconds"] = {k: round(float(v), 3) for k, v in seconds.items()}
        rec["total_evaluation_time_seconds"] = str(round(sum(seconds.values()), 3))
    return rec


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("prunelens", "transformers", "torch"):
        try:
            out[f"{dist}_version"] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _is_metric_map(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, (int, float, str, bool)) or v is None for v in obj.values())


def _task_metrics(results: Mapping[str, Any], counts: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task, row in results.items():
        if not isinstance(row, Mapping):
            raise PrunelensError(f"eval results: task {task!r} has {type(row).__name__}, expected metric: value pairs")
        metrics = {plain_metric(k): float(v) for k, v in row.items()
                   if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        n = counts.get(task)
        if isinstance(n, Mapping) and "effective" in n:
            metrics["n"] = float(n["effective"])
        out[str(task)] = metrics
    return out


def read_results(obj: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Any supported eval-results shape -> ``{model label: {task: {metric: value}}}`` (metric names without filter)."""
    if not isinstance(obj, Mapping) or not obj:
        raise PrunelensError("eval results: expected a JSON object with task results")
    if "results" in obj and isinstance(obj["results"], Mapping):  # one record (new or old prunelens shape)
        label = str((obj.get("config") or {}).get("model") or obj.get("model") or "model")
        return {label: _task_metrics(obj["results"], obj.get("n-samples") or {})}
    values = list(obj.values())
    if all(isinstance(v, Mapping) and "results" in v for v in values):  # {label: record}
        return {str(k): next(iter(read_results(v).values())) for k, v in obj.items()}
    if all(isinstance(v, Mapping) and v and all(_is_metric_map(m) for m in v.values()) for v in values):
        return {str(k): _task_metrics(v, {}) for k, v in obj.items()}  # {label: {task: {metric}}}
    if all(_is_metric_map(v) for v in values):  # bare {task: {metric}}
        return {"model": _task_metrics(obj, {})}
    raise PrunelensError("eval results: unrecognised shape (expected the JSON that `prunelens eval --json` writes)")


def load_results(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """Read an eval-results JSON file (see ``read_results``); one clear error for a bad file."""
    obj = read_json(path)
    try:
        return read_results(obj)
    except PrunelensError as exc:
        raise PrunelensError(f"{path}: {exc}") from None

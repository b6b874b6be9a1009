"""Run lm-evaluation-harness tasks on a loaded (or applied) model: ``prunelens eval MODEL --lm-eval TASKS``.

lm-eval is an optional extra (``pip install 'prunelens[lm-eval]'``); it is imported only here,
and only when asked. The model already in memory is handed over as ``HFLM(pretrained=model)``,
so what lm-eval scores is exactly what prunelens loaded (a bundled alias, a GGUF, an applied plan).
"""

from __future__ import annotations

from typing import Any

from prunelens.errors import PrunelensError, closest

MERGED_SECTIONS = ("results", "n-samples", "versions", "configs", "higher_is_better", "n-shot", "samples")
INSTALL_HINT = "pip install 'prunelens[lm-eval]'"


def require_lm_eval() -> Any:
    """The ``lm_eval`` module, or one clear error saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (the [hf] extra)
    except ImportError as exc:
        raise PrunelensError(f"--lm-eval needs lm-evaluation-harness with its hf extra ({exc.name or exc} is not "
                             f"installed): {INSTALL_HINT}") from None
    return lm_eval


def lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def split_tasks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise PrunelensError("--lm-eval: name at least one lm-eval task")
    return names


def run_lm_eval(loaded: Any, tasks: str, *, include_path: str | None = None, limit: int | None = None,
                batch_size: int = 1, log_samples: bool = False, num_fewshot: int | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``HFLM(pretrained=loaded.model)``; returns lm-eval's own result dict."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = split_tasks(tasks)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [n for n in names if n not in set(manager.all_tasks)]
    if unknown:
        hint = "" if include_path else " (a task of your own: --lm-eval-include FOLDER)"
        guess = closest(unknown[0], manager.all_tasks)  # thousands of tasks: suggested, not listed
        if guess is not None:
            hint = f"; did you mean {guess}?{hint}"
        raise PrunelensError(f"unknown lm-eval task(s) {', '.join(unknown)}{hint}")
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=log_samples,
                                  num_fewshot=num_fewshot)
    if out is None:  # simple_evaluate returns None on non-zero ranks
        raise PrunelensError("lm-eval returned no results")
    return dict(out)


def merge_records(record: dict[str, Any], lm: dict[str, Any]) -> dict[str, Any]:
    """prunelens's record with lm-eval's tasks added section by section (lm-eval's run config kept aside)."""
    merged = dict(record)
    for key in MERGED_SECTIONS:
        if lm.get(key):
            merged[key] = {**(record.get(key) or {}), **lm[key]}
    merged["lm_eval_config"] = lm.get("config", {})
    version = lm_eval_version()
    if version:
        merged["lm_eval_version"] = version
    if "total_evaluation_time_seconds" in lm:
        merged["lm_eval_seconds"] = lm["total_evaluation_time_seconds"]
    return merged

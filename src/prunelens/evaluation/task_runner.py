"""Evaluation tasks: the ``Task`` base class, the task registry and the runner.

A task is a class registered through the ``register_tasks`` hook. It declares its
parameters with ``Param`` (shared ones: ``n_samples``, ``seed``, ``batch_size``) and
implements ``run(loaded, reference=None) -> {metric: float}``.

    from prunelens.evaluation.task_runner import run_tasks
    run_tasks(loaded, ["perplexity", "mc_nextline:n_samples=50"], reference=dense, seed=0)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from prunelens.errors import PrunelensError, unknown
from prunelens.params import Param, Parameterized, parse_spec

COMMON_PARAMS = ("n_samples", "seed", "batch_size")  # what --samples, --seed, --batch-size set


class Task(Parameterized):
    """Base class of every evaluation task."""

    kind = "task"
    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs_reference: ClassVar[bool] = False
    params: ClassVar[dict[str, Param]] = {}
    version: ClassVar[str] = "1"  # bump when a task's items or scoring change (recorded in results files)

    def __init__(self, **values: Any):
        super().__init__(**values)
        self.show_progress = False
        self.samples: list[dict[str, Any]] = []  # per-item logs a task may fill (written with --log-samples)

    def progress(self, iterable: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
        """Wrap a loop in a progress bar (with ETA) when the runner asks for one."""
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=f"{self.name}: {desc}", leave=False, dynamic_ncols=True)

    def run(self, loaded: Any, reference: Any | None = None) -> dict[str, float]:
        """Evaluate ``loaded`` (a ``LoadedModel``); ``reference`` is the dense model when a task compares."""
        raise NotImplementedError


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def task_registry() -> dict[str, tuple[str, type[Task]]]:
    """task name -> (plugin name, class) from every plugin."""
    from prunelens.plugins import registry

    return registry("register_tasks", key=lambda cls: cls.name)


def parse_task(text: str, **defaults: Any) -> Task:
    """``mc_nextline:n_samples=50`` -> a validated ``Task``; ``defaults`` apply where the task has that parameter
    and the text does not set it."""
    name, given = parse_spec(text, "task")
    reg = task_registry()
    if name not in reg:
        raise unknown("task", name, reg)
    cls = reg[name][1]
    values = {k: v for k, v in defaults.items() if k in cls.params and v is not None}
    values.update(given)
    return cls(**values)


def split_task_list(text: str) -> list[str]:
    """``perplexity,mc_nextline:n_samples=8,seed=1,gsm8k`` -> task specs (a ``k=v`` item belongs to the task
    before it)."""
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part and ":" not in part and specs:
            specs[-1] += ("," if ":" in specs[-1] else ":") + part
        else:
            specs.append(part)
    return specs


def build_tasks(tasks: Sequence[str | Task], **params: Any) -> list[Task]:
    """Task specs (or instances) -> tasks; ``params`` go to every task that declares them."""
    reg = task_registry()
    given = {k for k, v in params.items() if v is not None}
    names = [t.name if isinstance(t, Task) else t.split(":", 1)[0].strip() for t in tasks]
    accepted = {p for n in names if n in reg for p in reg[n][1].params}
    unused = given - accepted
    if unused and all(n in reg for n in names):
        raise PrunelensError(f"no selected task takes parameter(s) {', '.join(sorted(unused))}")
    return [t if isinstance(t, Task) else parse_task(t, **params) for t in tasks]


def run_tasks(loaded: Any, tasks: Sequence[str | Task], reference: Any | None = None, progress: bool = False,
              timings: dict[str, float] | None = None, **params: Any) -> dict[str, dict[str, float]]:
    """Run tasks on ``loaded``; return ``{task name: {metric: value}}``.

    ``params`` (e.g. ``n_samples=20, seed=0``) apply to every task that has them; a task
    spec's own ``name:k=v`` values win. ``timings``, if given, receives seconds per task.
    """
    built = build_tasks(tasks, **params)
    missing = [t.name for t in built if t.needs_reference and reference is None]
    if missing:
        raise PrunelensError(f"task(s) {', '.join(missing)} compare against the dense model: "
                             "pass a reference (--reference MODEL)")
    import torch

    results: dict[str, dict[str, float]] = {}
    for task in built:
        task.show_progress = progress
        t0 = time.perf_counter()
        with torch.no_grad():
            metrics = task.run(loaded, reference=reference)
        key = task.name if task.name not in results else task.spec  # the same task twice: key by spec
        results[key] = {k: float(v) for k, v in metrics.items()}
        if timings is not None:
            timings[key] = time.perf_counter() - t0
    return results

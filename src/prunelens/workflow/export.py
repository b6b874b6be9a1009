"""Plan export: the plan JSON and, optionally, a mergekit YAML and an llm-compressor recipe, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


def export_plan(plan: Any, json_path: PathLike | None, mergekit_path: PathLike | None = None,
                recipe_path: PathLike | None = None) -> list[Path]:
    """Write ``plan`` as JSON to ``json_path`` (None: no JSON) and mergekit YAML / llm-compressor recipe when given.

    Every text is built before anything is written, so a plan that one format cannot express
    (a mergekit config of sublayer drops, a recipe of an unsupported method) fails without
    leaving files behind. Each file is written atomically with the umask's mode
    (``prunelens.fileio``); a path ``-`` prints that text to standard output instead. Returns
    the files written, in the order given.
    """
    from prunelens.fileio import write_output

    texts: list[tuple[PathLike, str]] = [] if json_path is None else [(json_path, plan.to_json())]
    if mergekit_path is not None:
        texts.append((mergekit_path, plan.to_mergekit_yaml()))
    if recipe_path is not None:
        from prunelens.plan.llmcompressor_recipe import recipe_yaml

        texts.append((recipe_path, recipe_yaml(plan)))
    written = [write_output(path, text) for path, text in texts]
    return [p for p in written if p is not None]


def prepare_plan(plan: Any, ds: Any) -> Any:
    """What every front end does to a plan from ``ds`` before writing it: record which text its inputs came
    from (``plan.data``, unless set) and refuse an empty or whole-model plan (``check_plan_sane``)."""
    from prunelens.plan.checks import check_plan_sane

    if not plan.data:
        from prunelens.text.corpora import plan_data

        plan.data = plan_data(ds)
    check_plan_sane(plan, ds)
    return plan

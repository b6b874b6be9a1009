"""The workflow layer: what the CLI, the TUI, the demo and the report share above the core.

- ``tables``: rich tables and JSON shapes of rankings, plans, validations, evaluations and probe summaries;
- ``listings``: the tables that list installed strategies, tasks, plugins and bundled models;
- ``export``: plan export (JSON, mergekit YAML, llm-compressor recipe) through one atomic writer, and
  ``prepare_plan``, what every front end adds to a plan before writing it;
- ``summaries``: the one-line results of ``compress`` and ``apply``;
- ``report``: a Markdown report with plots for a store (and a plan, task results);
- ``compare_allocations``: allocations side by side at one budget, each applied and scored on held-out text;
- ``demo``: the end-to-end demo on the bundled model.

Modules here import rich and the core lazily enough that ``prunelens --help`` stays fast; they never
import click or textual (the CLI and the TUI sit above this layer).
"""

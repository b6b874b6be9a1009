"""The plan layer: from a probe store to a plan, and from a plan to a real checkpoint.

- ``ranking``: rank units by how safely they can be compressed (reads the store);
- ``document``: a plan as data (canonical JSON, mergekit export); ``checks``: sanity checks before it is written;
- ``budgets``: what a plan may spend and what each option saves;
- ``unit_selection``: a plan's units from one ranking, or by re-probing (``--iterative``);
- ``allocation`` and ``search_allocation``: budgeted per-unit choices (knapsack, uniform, OWL, evolutionary search);
- ``llmcompressor_recipe``: a plan as an llm-compressor recipe;
- ``apply``: compress a model with a plan, write the checkpoint, measure predicted against real KL.

May import ``prunelens.probe``, ``prunelens.evaluation``, ``prunelens.compression``, ``prunelens.model``,
``prunelens.text``, ``prunelens_store`` and the base modules.
"""

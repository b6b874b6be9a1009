"""The evaluation layer: scoring a model on real tasks.

- ``task_runner``: the ``Task`` base class, the task registry and the runner;
- ``scoring``: building blocks of tasks (log-likelihood scoring, greedy decoding, answers);
- ``perplexity``: exp of the mean token negative log-likelihood over fixed windows;
- ``results``: the one on-disk schema of results (shaped like lm-evaluation-harness's);
- ``lm_eval_harness``: run lm-evaluation-harness tasks on a loaded model.

May import ``prunelens.text`` and the base modules; never the probe, compression or plans.
"""

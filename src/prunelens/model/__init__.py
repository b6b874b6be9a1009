"""The model layer: loading a model and knowing its shape, without any compression.

- ``loading``: bundled aliases, local Hugging Face folders, ``.gguf`` files, hub ids, in the requested dtype and
  placement;
- ``adapters``: an architecture's units, readout and each layer's inputs (the one capture/replay primitive);
- ``devices`` and ``offload``: ``--device`` values, accelerate placement and offloaded weights;
- ``info`` and ``parameter_counts``: what a model is, read from its config (parameters counted by unique storage);
- ``cost_estimate``: peak memory and time of a probe or a compression from the config alone (``--dry-run``).

May import the base modules (``prunelens.errors``, ``paths``, ``fileio``, ``units``, ``params``, ``plugins``...)
and nothing else of prunelens.
"""

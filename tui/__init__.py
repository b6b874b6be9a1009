"""The prunelens Textual app (``prunelens tui`` / ``python -m prunelens_tui``).

Nothing under ``prunelens`` (the core) imports this package; the CLI imports it lazily.
"""

"""The prunelens Textual app. Nothing under ``prunelens`` (the core) imports this package."""

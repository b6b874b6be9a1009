"""Where prunelens keeps prepared models and caches (override with PRUNELENS_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "PRUNELENS_HOME"


def home() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".cache" / "prunelens").expanduser()


def models_dir() -> Path:
    return home() / "models"

"""``python -m prunelens``."""

from .cli import main

main()

"""``python -m prunelens``."""

from prunelens.cli import main

main()

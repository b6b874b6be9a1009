"""Probe prompts: token ids per sample (optionally with multiple-choice candidate tokens)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelens.errors import PrunelensError
from prunelens.text.tokens import with_prefix


@dataclass
class Prompts:
    """Token-id prompts (each at most ``prompt_len`` long) and optional candidate token ids per sample."""

    ids: list[list[int]]
    candidates: list[list[int]] | None = None
    source: str = ""
    texts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ids or any(len(r) == 0 for r in self.ids):
            raise PrunelensError("every probe prompt needs at least one token")
        if self.candidates is not None and len(self.candidates) != len(self.ids):
            raise PrunelensError("candidates must be given for every prompt (use [] for none)")

    def __len__(self) -> int:
        return len(self.ids)

    def repeated(self, k: int) -> Prompts:
        """Each prompt ``k`` times in a row (sampled decoding: ``k`` continuations per prompt)."""
        def rep(rows: list[list[int]]) -> list[list[int]]:
            return [list(r) for r in rows for _ in range(k)]

        return Prompts(rep(self.ids), None if self.candidates is None else rep(self.candidates),
                       f"{self.source} x{k}" if self.source else f"x{k}", [t for t in self.texts for _ in range(k)])

    @property
    def max_len(self) -> int:
        return max(len(r) for r in self.ids)

    def padded(self, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Left-padded ids [N, max_len], attention mask, and whether any padding was needed."""
        n, width = len(self.ids), self.max_len
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(self.ids):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return ids, mask, bool((mask == 0).any())

    def candidate_array(self) -> np.ndarray | None:
        """[N, K] candidate ids padded with -1, or None."""
        if self.candidates is None or not any(self.candidates):
            return None
        k = max(len(c) for c in self.candidates)
        out = np.full((len(self.ids), k), -1, dtype=np.int64)
        for i, c in enumerate(self.candidates):
            out[i, : len(c)] = c
        return out


def shakespeare_prompts(tokenizer: Any, samples: int, prompt_len: int, seed: int = 0) -> Prompts:
    """``samples`` windows of ``prompt_len`` tokens from the Shakespeare ``probe`` split (disjoint from the
    calibration, search and held-out evaluation splits)."""
    from prunelens.text.corpora import token_windows

    rows = token_windows(tokenizer, samples, prompt_len, split="probe", seed=seed)
    return Prompts([list(map(int, r)) for r in rows], source=f"shakespeare:probe:seed={seed}")


def load_prompts(path: str | Path, tokenizer: Any, prompt_len: int, samples: int | None = None) -> Prompts:
    """Prompts from a file: ``.txt`` (one prompt per line) or ``.jsonl`` rows with ``prompt`` (text)
    or ``ids`` (token ids) and optional ``candidates`` (strings such as " A", or token ids).

    A text prompt starts with the tokenizer's own special prefix (``prunelens.text.tokens``: a BOS
    for Gemma or Llama); a prompt longer than ``prompt_len`` tokens keeps that prefix and its
    last tokens (given ``ids`` are used as they are); each candidate string must be one token.
    """
    p = Path(path)
    if not p.is_file():
        raise PrunelensError(f"prompts file not found: {path}")
    rows: list[dict[str, Any]] = []
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise PrunelensError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if p.suffix == ".jsonl":
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PrunelensError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not ("prompt" in row or "ids" in row):
                raise PrunelensError(f"{path}:{n}: expected an object with 'prompt' or 'ids'")
            rows.append(row)
    else:
        rows = [{"prompt": ln} for ln in lines]
    if samples is not None:
        rows = rows[:samples]
    if not rows:
        raise PrunelensError(f"no prompts in {path}")
    ids, cands, texts = [], [], []
    for n, row in enumerate(rows, 1):
        if "ids" in row:
            toks = token_ids(row["ids"], f"{path}:{n}: ids")
        else:
            if not isinstance(row["prompt"], str):
                raise PrunelensError(f"{path}:{n}: 'prompt' must be a string, not {type(row['prompt']).__name__}")
            if tokenizer is None:
                raise PrunelensError(f"{path}:{n}: text prompts need a tokenizer; give 'ids'")
            toks = with_prefix(tokenizer, tokenizer(row["prompt"], add_special_tokens=False)["input_ids"], prompt_len)
        ids.append(toks[-prompt_len:])
        texts.append(row.get("prompt", ""))
        cands.append([_candidate_id(c, tokenizer, path, n) for c in row.get("candidates", [])])
    return Prompts(ids, cands if any(cands) else None, source=str(p), texts=texts)


def token_ids(value: Any, where: str) -> list[int]:
    """``value`` as a list of non-negative token ids, or a one-line error saying what is wrong."""
    if not isinstance(value, list):
        raise PrunelensError(f"{where} must be a list of token ids, not {type(value).__name__}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise PrunelensError(f"{where}: {bad[0]!r} is not a token id (a non-negative integer)")
    return [int(v) for v in value]


def check_vocab(prompts: Prompts, vocab_size: int) -> None:
    """One-line error when a prompt or candidate id is outside the model's vocabulary (before any store is made)."""
    for what, rows in (("prompt", prompts.ids), ("candidate", prompts.candidates or [])):
        for i, row in enumerate(rows, 1):
            for t in row:
                if not 0 <= int(t) < vocab_size:
                    raise PrunelensError(f"{what} {i}: token id {t} is outside the model's vocabulary "
                                         f"(0..{vocab_size - 1})")


def _candidate_id(c: Any, tokenizer: Any, path: Any, n: int) -> int:
    if isinstance(c, bool) or (not isinstance(c, (int, str))):
        raise PrunelensError(f"{path}:{n}: candidate {c!r} must be a token id or a string")
    if isinstance(c, int):
        if c < 0:
            raise PrunelensError(f"{path}:{n}: candidate {c!r} is not a token id (a non-negative integer)")
        return c
    if tokenizer is None:
        raise PrunelensError(f"{path}:{n}: candidate {c!r} needs a tokenizer; give token ids")
    toks = tokenizer(str(c), add_special_tokens=False)["input_ids"]
    if len(toks) != 1:
        raise PrunelensError(f"{path}:{n}: candidate {c!r} is {len(toks)} tokens; each candidate must be one token")
    return int(toks[0])

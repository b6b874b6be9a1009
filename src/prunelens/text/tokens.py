"""Token ids built the way the model's own tokenizer builds them: the one place every path goes through.

A tokenizer's convention is what ``tokenizer(text)`` puts around the text's own tokens
(``add_special_tokens``, ``add_bos_token``, a post-processor template): Gemma and Llama-2/3
put ``<bos>`` first, SmolLM2 and GPT-2 put nothing. Probe prompts, perplexity and
calibration windows, task contexts and generation prompts all start with that prefix, so a
model that was trained with a BOS always sees one. A trailing special token (an EOS that a
few tokenizers append) is recorded but never appended: a prompt is continued, not closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prunelens.errors import PrunelensError

_PROBE_TEXT = "Hello world"
_cache: dict[int, tuple[Any, Convention]] = {}


@dataclass(frozen=True)
class Convention:
    """The special ids a tokenizer puts before (``prefix``) and after (``suffix``) a text's tokens."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    @property
    def adds_bos(self) -> bool:
        return bool(self.prefix)

    def as_attrs(self) -> dict[str, Any]:
        """What a store or checkpoint records as its tokenization provenance."""
        return {"adds_bos": self.adds_bos, "prefix_ids": list(self.prefix), "suffix_ids": list(self.suffix),
                "rule": "text ids = prefix_ids + tokenizer(text, add_special_tokens=False); suffix never appended"}


def _ids(enc: Any) -> list[int]:
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    return [int(i) for i in ids]


def convention(tokenizer: Any) -> Convention:
    """The tokenizer's convention, found by encoding a probe text with and without special tokens."""
    if tokenizer is None:
        return Convention()
    hit = _cache.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    with_special = _ids(tokenizer(_PROBE_TEXT, add_special_tokens=True))
    plain = _ids(tokenizer(_PROBE_TEXT, add_special_tokens=False))
    conv = Convention()
    n = len(plain)
    for i in range(len(with_special) - n + 1):
        if with_special[i:i + n] == plain:
            conv = Convention(tuple(with_special[:i]), tuple(with_special[i + n:]))
            break
    else:
        raise PrunelensError("cannot tell which special tokens the tokenizer adds: tokenizer(text) does not "
                             "contain tokenizer(text, add_special_tokens=False)")
    _cache[id(tokenizer)] = (tokenizer, conv)
    return conv


def encode(tokenizer: Any, text: str, special: bool = True) -> list[int]:
    """``text`` as the model expects it at the start of a sequence (``special``), or bare (a continuation)."""
    ids = _ids(tokenizer(text, add_special_tokens=False))
    return list(convention(tokenizer).prefix) + ids if special else ids


def with_prefix(tokenizer: Any, content: Sequence[int], length: int | None = None) -> list[int]:
    """The tokenizer's prefix followed by ``content`` — at most ``length`` ids in all, keeping the prefix
    and the *last* content ids (a long prompt loses its beginning, never its BOS)."""
    prefix = list(convention(tokenizer).prefix)
    content = [int(i) for i in content]
    if length is not None:
        room = length - len(prefix)
        if room < 1:
            raise PrunelensError(f"length {length} leaves no room for text after the tokenizer's {len(prefix)} "
                                 "special token(s)")
        content = content[-room:]
    return prefix + content

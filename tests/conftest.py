"""Shared fixtures: tiny random models built from configs (no download) and the bundled model."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("PRUNELENS_LOAD_PLUGINS", "")  # tests never autoload installed plugins
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_ARCHS = ("llama", "qwen2", "mistral", "gemma3_text", "gpt2", "gpt_neox")


def tiny_config(arch: str, layers: int = 3, vocab: int = 96, hidden: int = 32):
    """A small config for each supported architecture."""
    import transformers as T

    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=4)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=128,
                            bos_token_id=0, eos_token_id=0)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, max_position_embeddings=128,
                               bos_token_id=0, eos_token_id=0, **common)
    if arch == "gemma3_text":
        return T.Gemma3TextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=128, sliding_window=8, bos_token_id=0, eos_token_id=1,
                                  pad_token_id=0, **common)
    cls = {"llama": T.LlamaConfig, "qwen2": T.Qwen2Config, "mistral": T.MistralConfig}[arch]
    return cls(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, max_position_embeddings=128,
               bos_token_id=0, eos_token_id=1, pad_token_id=0, **common)


def make_tiny_model(arch: str = "llama", layers: int = 3, seed: int = 0, **kw):
    """A tiny random causal LM in eval mode (float32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers=layers, **kw))
    return model.eval()


@pytest.fixture(params=TINY_ARCHS)
def tiny_arch_model(request):
    return request.param, make_tiny_model(request.param)


@pytest.fixture
def tiny_llama():
    return make_tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M (prepared by setup). Mark tests using it with ``real_model``."""
    from prunelens.model.loading import load_model

    return load_model("smollm2-135m")

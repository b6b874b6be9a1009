"""Built-in architectures: llama, qwen2, mistral, gemma3 text, gpt2, gpt_neox."""

from prunelens.hookspecs import hookimpl
from prunelens.model.adapters import ArchitectureSpec

LLAMA_LIKE = ArchitectureSpec(
    name="llama-like",
    model_types=("llama", "qwen2", "mistral", "gemma3_text", "qwen3", "gemma2", "phi3", "olmo2"),
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    final_norm="model.norm",
)
GPT2 = ArchitectureSpec(
    name="gpt2", model_types=("gpt2",), layers="transformer.h", attn="attn", mlp="mlp",
    final_norm="transformer.ln_f", embed="transformer.wte",
)
GPT_NEOX = ArchitectureSpec(
    name="gpt_neox", model_types=("gpt_neox",), layers="gpt_neox.layers", attn="attention", mlp="mlp",
    final_norm="gpt_neox.final_layer_norm", embed="gpt_neox.embed_in",
)


@hookimpl
def register_architectures(register):
    for spec in (LLAMA_LIKE, GPT2, GPT_NEOX):
        register(spec)

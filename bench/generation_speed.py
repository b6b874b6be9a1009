"""Which savings are real: generation tokens/s and memory of dense vs compressed SmolLM2 on this machine.

Variants (all built in memory from the bundled model, the same code ``apply`` uses):

- ``dense``;
- ``drop 4 blocks``: blocks removed (``drop_units``), as in the saved checkpoint;
- ``drop 8 attn (plain)``: 8 attentions dropped the way plain transformers loads them
  (zeroed ``o_proj``: still stored, computed and cached);
- ``drop 8 attn (slim)``: the same model through ``prunelens.compression.remove_dropped`` (sublayers removed);
- ``50% unstructured``: half of every decoder linear weight zeroed (magnitude; the speed of
  a dense matmul does not depend on which weights are zero, so no calibration is needed);
- ``rtn 4-bit (fake quant)``: weights rounded to a 4-bit grid but stored as float32.

Each variant greedily generates ``--new`` tokens after a ``--prompt``-token held-out prompt,
batch 1, KV cache on, ``--repeats`` times interleaved with the others (so load changes hit
every variant alike); the median tokens/s and its ratio to dense are printed, next to the
parameter bytes and the KV cache bytes at the end of generation.

    python bench/generation_speed.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

MODEL = "smollm2-135m"


def variants() -> dict[str, Callable[[Any], None]]:
    from prunelens.compression.methods import parse_method
    from prunelens.compression.remove_dropped import slim_model
    from prunelens.compression.sequential import compress_model, drop_units
    from prunelens.units import Unit

    attn = [Unit(i, "attn") for i in range(10, 18)]

    def blocks(m: Any) -> None:
        drop_units(m, [Unit(i, "block") for i in (20, 21, 22, 23)])

    def plain(m: Any) -> None:
        drop_units(m, attn)

    def slim(m: Any) -> None:
        drop_units(m, attn)
        slim_model(m)

    def sparse(m: Any) -> None:
        compress_model(m, parse_method("magnitude:sparsity=0.5"), progress=False)

    def rtn(m: Any) -> None:
        compress_model(m, parse_method("rtn:bits=4"), progress=False)

    return {"dense": lambda m: None, "drop 4 blocks": blocks, "drop 8 attn (plain)": plain,
            "drop 8 attn (slim)": slim, "50% unstructured": sparse, "rtn 4-bit (fake quant)": rtn}


def cache_bytes(cache: Any) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total


def generate(model: Any, ids: Any, new: int) -> tuple[float, int]:
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, eos_token_id=None, return_dict_in_generate=True)
        dt = time.perf_counter() - t0
    return new / dt, cache_bytes(out.past_key_values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from prunelens.model.loading import load_model
    from prunelens.text.corpora import token_windows

    torch.set_num_threads(args.threads)
    models = {}
    for name, build in variants().items():
        m = load_model(MODEL)
        build(m)
        models[name] = m
    ids = torch.as_tensor(token_windows(models["dense"].tokenizer, 1, args.prompt, split="heldout", seed=5))
    for m in models.values():  # warm-up
        generate(m.model, ids, 4)
    speeds: dict[str, list[float]] = {n: [] for n in models}
    kv: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, m in models.items():
            tps, kv[name] = generate(m.model, ids, args.new)
            speeds[name].append(tps)
    dense = statistics.median(speeds["dense"])
    print(f"SmolLM2-135M, float32, batch 1, {args.prompt}-token prompt + {args.new} greedy tokens, "
          f"{args.threads} thread(s), median of {args.repeats} interleaved runs")
    print("| variant | layers | params | param MB | KV cache MB | tokens/s | vs dense |")
    print("|---|---|---|---|---|---|---|")
    for name, m in models.items():
        params = sum(p.numel() for p in m.model.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in m.model.parameters())
        med = statistics.median(speeds[name])
        print(f"| {name} | {m.adapter.num_layers} | {params / 1e6:.1f}M | {nbytes / 1e6:.0f} | {kv[name] / 1e6:.2f} | "
              f"{med:.1f} | {med / dense:.2f}x |")


if __name__ == "__main__":
    main()

"""Uniform and OWL sparsity by llm-compressor's own code, on prunelens' calibration windows.

Runs in a SEPARATE environment (never the project's): ::

    python -m venv /tmp/llmc-venv && /tmp/llmc-venv/bin/pip install torch==2.13.0
    /tmp/llmc-venv/bin/pip install "llmcompressor==0.14.*" "transformers>=5.15,<5.18"

First run ``bench/allocation.py`` (it writes OUT/ids.json with the exact calibration token
ids, and OUT/plans/*.recipe.yaml: every plan exported with ``prunelens.plan.llmcompressor_recipe``). Then ::

    /tmp/llmc-venv/bin/python bench/llmc_compare.py --out bench/out/allocation \\
        --model ~/.cache/prunelens/models/smollm2-135m
    .venv/bin/python bench/allocation.py --out bench/out/allocation --llmc-dir bench/out/allocation/llmc --only none

For each condition ``{wanda,sparsegpt}{50,60,70}-{uniform,owl}`` this builds the
llm-compressor recipe by hand (``WandaPruningModifier`` / ``SparseGPTModifier`` on every
decoder layer, ``sparsity_profile: owl, owl_m: 5, owl_lmbda: 0.08`` for OWL), and for
``*-knapsack`` it uses the recipe prunelens exported from our own plan; runs
``llmcompressor.oneshot`` (sequential pipeline) on the same calibration windows, and saves
the model under OUT/llmc/<condition>-llmc with ``llmc_meta.json`` (the per-layer sparsity
llm-compressor actually produced). prunelens evaluates those checkpoints with the same
held-out evaluation as its own (``--llmc-dir``), so the two columns differ only in the
compression code.

llm-compressor 0.14's OWL does not run through ``oneshot`` as shipped; two workarounds here,
its own OWL computation (activation norms, outlier ratios, the λ rescaling) untouched:

1. ``_infer_owl_layer_sparsity`` gathers activations with ``run_calibration`` (the basic
   pipeline), which fires lifecycle events while the session is still initialising:
   ``ValueError: Cannot invoke event before initializing``. We let it run a plain forward
   over the same dataloader instead (its hooks record the same activations).
2. It returns a dict, which ``on_calibration_start`` hands to every module as its sparsity
   (``case _:``), so pruning would fail with a TypeError. We return the same values as a
   list in layer order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

LAYERS = r"re:.*layers\.\d+$"
SPARSITY = [("wanda", 0.6), ("wanda", 0.7), ("sparsegpt", 0.6), ("sparsegpt", 0.7), ("wanda", 0.5)]
MODIFIER = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier"}


def recipe_for(family: str, sparsity: float, owl: bool) -> dict:
    args: dict = {"sparsity": sparsity, "targets": [LAYERS], "mask_structure": "0:0"}
    if family == "sparsegpt":
        args.update(block_size=128, dampening_frac=0.01)
    if owl:
        args.update(sparsity_profile="owl", owl_m=5, owl_lmbda=0.08)
    return {"oneshot_stage": {"pruning_modifiers": {MODIFIER[family]: args}}}


def patch_owl() -> None:
    """Make llm-compressor 0.14's OWL sparsities a list (see the module docstring)."""
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase

    original = SparsityModifierBase._infer_owl_layer_sparsity
    if getattr(original, "_prunelens_patched", False):
        return

    def plain_forward(model, dataloader) -> None:
        import torch
        from llmcompressor.pytorch.utils.helpers import tensors_to_device

        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in dataloader:
                model(**tensors_to_device(batch, device))

    def as_list(self, model, layers, dataloader):
        import llmcompressor.pipelines.basic as basic

        saved = basic.run_calibration
        basic.run_calibration = plain_forward
        try:
            values = original(self, model, layers, dataloader)
        finally:
            basic.run_calibration = saved
        self._owl_layer_sparsity = dict(values)
        return [float(values[name]) for name in layers]

    as_list._prunelens_patched = True
    SparsityModifierBase._infer_owl_layer_sparsity = as_list


def layer_sparsity(model) -> list[float]:
    import torch

    out = []
    for layer in model.model.layers:
        z = t = 0
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                z += int((m.weight == 0).sum())
                t += m.weight.numel()
        out.append(z / t)
    return out


def run(name: str, recipe, model_dir: Path, calib: list[list[int]], dest: Path, ours: str) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = Dataset.from_dict({"input_ids": calib, "attention_mask": [[1] * len(r) for r in calib]})
    import yaml

    text = yaml.safe_dump(recipe, sort_keys=False) if isinstance(recipe, dict) else recipe
    oneshot(model=model, processor=AutoTokenizer.from_pretrained(model_dir), dataset=ds, recipe=text,
            num_calibration_samples=len(calib),
            max_seq_length=len(calib[0]), shuffle_calibration_samples=False, pipeline="sequential",
            batch_size=1)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(f, tmp / f.name)
    meta = {"ours": ours, "layer_sparsity": [round(s, 4) for s in layer_sparsity(model)],
            "recipe": recipe if isinstance(recipe, dict) else str(recipe), "seconds": round(time.time() - t0, 1)}
    (tmp / "llmc_meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    mean_sparsity = sum(meta['layer_sparsity']) / len(meta['layer_sparsity'])
    print(f"[llmc] {name}: {meta['seconds']}s, mean sparsity {mean_sparsity:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/out/allocation")
    ap.add_argument("--model", default=str(Path.home() / ".cache/prunelens/models/smollm2-135m"))
    ap.add_argument("--only", default="", help="comma-separated name prefixes, in this order")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    calib = json.loads((out / "ids.json").read_text())["calib"]
    patch_owl()
    todo: list[tuple[str, object, str]] = []
    for fam, s in SPARSITY:
        tag = f"{fam}{round(s * 100)}"
        for alloc in ("uniform", "owl"):
            todo.append((f"{tag}-{alloc}", recipe_for(fam, s, alloc == "owl"), f"{tag}-{alloc}"))
        recipe = out / "plans" / f"{tag}-knapsack.recipe.yaml"
        if recipe.is_file():
            todo.append((f"{tag}-knapsack", str(recipe), f"{tag}-knapsack"))
    prefixes = [p for p in args.only.split(",") if p] or [""]
    ordered = []
    for p in prefixes:
        ordered += [t for t in todo if t[0].startswith(p) and t not in ordered]
    for name, recipe, ours in ordered:
        dest = out / "llmc" / f"{name}-llmc"
        if (dest / "llmc_meta.json").is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(name, recipe, Path(args.model).expanduser(), calib, dest, ours)


if __name__ == "__main__":
    main()

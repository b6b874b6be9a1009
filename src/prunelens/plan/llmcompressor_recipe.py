"""Export a plan as an llm-compressor recipe (per-layer sparsity / quantization targets).

A method names its llm-compressor equivalent itself (``Method.llmcompressor_modifier`` and
``llmcompressor_family``, "pruning" or "quantization"), so a third-party method exports too; each
plan unit becomes a target of that modifier with the unit's own level. The built-ins declare:

=============  ===========================  ==============================================
prunelens      llm-compressor modifier      parameters carried over
=============  ===========================  ==============================================
wanda          ``WandaPruningModifier``     sparsity (a list, one per target), N:M pattern
sparsegpt      ``SparseGPTModifier``        sparsity list, pattern, blocksize, percdamp
rtn            ``QuantizationModifier``     bits, sym, group_size (one config group each)
gptq           ``GPTQModifier``             bits, sym, group_size, blocksize, percdamp
=============  ===========================  ==============================================

Pruning targets are whole units (``model.layers.3`` for a block, ``model.layers.3.self_attn``
for an attention): llm-compressor prunes every linear inside a target at that target's
sparsity, exactly as prunelens does. Quantization targets are the unit's linear layers.
Units of one method with different fixed parameters (e.g. 2:4 and unstructured) go into
separate modifier groups. A method with ``blocksize``/``percdamp`` parameters passes them as
``block_size``/``dampening_frac``. ``drop`` and ``magnitude`` have no one-shot equivalent: a plan
using them raises ``PrunelensError`` (export block drops with ``--mergekit`` instead).

The recipe is plain data (``yaml.safe_load`` reads it back; the plan's strings in the header comments
are quoted scalars, ``safe_text.yaml_scalar``); llm-compressor is never imported here.
"""

from __future__ import annotations

import re
from typing import Any

from prunelens.errors import PrunelensError
from prunelens.units import Unit


def _solver_args(values: dict[str, Any]) -> dict[str, Any]:
    """``blocksize``/``percdamp`` of an OBS-style method as llm-compressor's ``block_size``/``dampening_frac``."""
    if values.get("blocksize") is None or values.get("percdamp") is None:
        return {}
    return {"block_size": int(values["blocksize"]), "dampening_frac": float(values["percdamp"])}


def _exact(name: str) -> str:
    """An llm-compressor target matching exactly one module name."""
    return f"re:^{re.escape(name)}$"


def _meta_adapter(model_id: str) -> Any:
    """The plan model's adapter on a meta model built from its config (no weights are read)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from prunelens.model.adapters import get_adapter
    from prunelens.model.info import model_config

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(model_config(model_id), trust_remote_code=False)
    return get_adapter(model)


def _mask_structure(pattern: str | None) -> str:
    if not pattern:
        return "0:0"
    from prunelens.compression.sparsity_masks import parse_pattern

    n_m = parse_pattern(pattern)
    return "0:0" if n_m is None else f"{n_m[0]}:{n_m[1]}"


def _weights_scheme(values: dict[str, Any]) -> dict[str, Any]:
    gs = int(values["group_size"])
    scheme: dict[str, Any] = {"num_bits": int(values["bits"]), "type": "int", "symmetric": bool(values["sym"]),
                              "strategy": "group" if gs > 0 else "channel"}
    if gs > 0:
        scheme["group_size"] = gs
    return scheme


def llmcompressor_recipe(plan: Any, adapter: Any = None) -> dict[str, Any]:
    """The plan as an llm-compressor recipe dict (one ``oneshot_stage``).

    ``adapter`` (of the plan's model, meta weights are enough) gives the module names; by
    default it is built from the plan's model config.
    """
    from prunelens.compression.methods import parse_method

    pairs = plan.unit_methods() if hasattr(plan, "unit_methods") else [(u, plan.method) for u in plan.unit_objects()]
    if not pairs:
        raise PrunelensError("the plan has no units; nothing to export")
    methods = [(unit, parse_method(spec)) for unit, spec in pairs]
    missing = sorted({m.spec for _, m in methods if m.llmcompressor_modifier is None})
    if missing:
        from prunelens.compression.methods import method_registry

        have = sorted(n for n, (_, cls) in method_registry().items() if cls.llmcompressor_modifier is not None)
        raise PrunelensError(f"no llm-compressor equivalent for {', '.join(missing)} (it has one for "
                             f"{', '.join(have)}); export block drops with --mergekit")
    if adapter is None:
        adapter = _meta_adapter(plan.model_id)
    order = {name: i for i, (name, _) in enumerate(adapter.model.named_modules())}
    stage: dict[str, Any] = {}
    counters: dict[str, int] = {}
    for key, members in _modifier_groups(methods).items():
        name = key[0]
        first = members[0][1]
        k = counters.get(name, 0)
        counters[name] = k + 1
        group = f"{name}{'' if k == 0 else f'_{k}'}_modifiers"
        if first.llmcompressor_family == "pruning":
            args = _pruning_args(members, first, key[1], adapter, order)
        else:
            args = _quantization_args(members, first, adapter, order)
        stage[group] = {first.llmcompressor_modifier: args}
    return {"oneshot_stage": stage}


def _modifier_groups(methods: list[tuple[Unit, Any]]) -> dict[tuple, list[tuple[Unit, Any]]]:
    """(unit, method) pairs by modifier group: one per method name and fixed parameters (pattern, solver)."""
    groups: dict[tuple, list[tuple[Unit, Any]]] = {}
    for unit, m in methods:
        v = dict(m.values)
        key: tuple[Any, ...]
        if m.llmcompressor_family == "pruning":
            key = (m.name, _mask_structure(v.get("pattern")), v.get("blocksize"), v.get("percdamp"))
        else:
            key = (m.name, v.get("blocksize"), v.get("percdamp"))
        groups.setdefault(key, []).append((unit, m))
    return groups


def _pruning_args(members: list[tuple[Unit, Any]], first: Any, mask_structure: str, adapter: Any,
                  order: dict[str, int]) -> dict[str, Any]:
    """A pruning modifier's arguments: the units as targets in model order, one sparsity or one per target."""
    members = sorted(members, key=lambda um: order[adapter.module_name(um[0])])
    sparsities = [float(m.values["sparsity"]) for _, m in members]
    args: dict[str, Any] = {
        "targets": [_exact(adapter.module_name(u)) for u, _ in members],
        "sparsity": sparsities[0] if len(set(sparsities)) == 1 else sparsities,
        "mask_structure": mask_structure,
    }
    args.update(_solver_args(dict(first.values)))
    return args


def _quantization_args(members: list[tuple[Unit, Any]], first: Any, adapter: Any,
                       order: dict[str, int]) -> dict[str, Any]:
    """A quantization modifier's arguments: one config group per weight scheme, targets the units' linears."""
    config_groups: dict[str, Any] = {}
    schemes: dict[tuple, list[str]] = {}
    for u, m in members:
        scheme = _weights_scheme(dict(m.values))
        schemes.setdefault(tuple(sorted(scheme.items())), []).extend(adapter.linears(u))
    for i, (scheme_key, linears) in enumerate(schemes.items()):
        config_groups[f"group_{i}"] = {"targets": [_exact(n) for n in sorted(linears, key=order.__getitem__)],
                                       "weights": dict(scheme_key), "input_activations": None,
                                       "output_activations": None}
    args: dict[str, Any] = {"config_groups": config_groups, "ignore": ["lm_head"]}
    if solver := _solver_args(dict(first.values)):
        args.update(solver, actorder=None)
    return args


def recipe_yaml(plan: Any, adapter: Any = None) -> str:
    """The recipe as YAML with a header saying where it came from."""
    import yaml

    from prunelens.safe_text import yaml_scalar as q

    recipe = llmcompressor_recipe(plan, adapter)
    units = len(plan.units)
    # plan strings in the comments are quoted scalars: a newline in a model path cannot start a YAML line
    header = (f"# llm-compressor recipe from prunelens plan (strategy {q(plan.strategy)}, {units} units, "
              f"method {q(plan.method)}, budget {q(plan.budget)})\n"
              f"# model: {q(plan.model_id)}\n"
              "# use: llmcompressor.oneshot(model=..., dataset=..., recipe=THIS_FILE)\n")
    return header + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=120)


def write_recipe(plan: Any, path: str, adapter: Any = None) -> str:
    """Write the recipe YAML atomically; returns the text."""
    from prunelens.fileio import atomic_write

    text = recipe_yaml(plan, adapter)
    atomic_write(path, text)
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m prunelens.plan.llmcompressor_recipe PLAN.json RECIPE.yaml``."""
    import sys

    from prunelens.plan.document import Plan

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m prunelens.plan.llmcompressor_recipe PLAN.json RECIPE.yaml", file=sys.stderr)
        return 2
    try:
        write_recipe(Plan.load(args[0]), args[1])
    except PrunelensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

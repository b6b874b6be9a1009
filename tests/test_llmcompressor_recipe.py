"""Plan -> llm-compressor recipe: the YAML parses, targets and levels match the plan unit for unit,
unsupported methods fail with one line, and (when /tmp/llmc-venv exists) llm-compressor accepts it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from prunelens.errors import PrunelensError
from prunelens.plan.document import Plan, PlanUnit
from prunelens.plan.llmcompressor_recipe import llmcompressor_recipe, main, recipe_yaml, write_recipe

LLMC_PYTHON = Path(os.environ.get("PRUNELENS_LLMC_PYTHON", "/tmp/llmc-venv/bin/python"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rank_helpers import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama4", layers=4)


def _plan(model_id: str, units: list[tuple[str, str]], method: str = "mixed") -> Plan:
    return Plan(model_id=model_id, config_hash="x", method=method, temperature=1.0, budget="sparsity=0.5",
                strategy="knapsack", units=[PlanUnit(unit=u, method=m) for u, m in units], num_layers=4)


MIXED = [("L2.mlp", "wanda:sparsity=0.7"), ("L0", "wanda:sparsity=0.4"), ("L1.attn", "wanda:sparsity=0.6"),
         ("L3", "wanda:pattern=2:4"), ("L1.mlp", "sparsegpt:sparsity=0.5"), ("L2.attn", "rtn:bits=3,sym=True"),
         ("L3.mlp", "gptq:bits=4,group_size=-1")]


def test_recipe_matches_the_plan_unit_for_unit(tiny_dir):
    plan = _plan(str(tiny_dir), MIXED[:3] + MIXED[4:6])
    recipe = yaml.safe_load(recipe_yaml(plan))
    stage = recipe["oneshot_stage"]
    assert set(stage) == {"wanda_modifiers", "sparsegpt_modifiers", "rtn_modifiers"}
    wanda = stage["wanda_modifiers"]["WandaPruningModifier"]
    # targets in model order (L0 before L1.attn before L2.mlp), each with its own sparsity
    assert wanda["targets"] == [r"re:^model\.layers\.0$", r"re:^model\.layers\.1\.self_attn$",
                                r"re:^model\.layers\.2\.mlp$"]
    assert wanda["sparsity"] == pytest.approx([0.4, 0.6, 0.7])
    assert wanda["mask_structure"] == "0:0"
    sgpt = stage["sparsegpt_modifiers"]["SparseGPTModifier"]
    assert sgpt["targets"] == [r"re:^model\.layers\.1\.mlp$"] and sgpt["sparsity"] == pytest.approx(0.5)
    assert sgpt["block_size"] == 128 and sgpt["dampening_frac"] == pytest.approx(0.01)
    quant = stage["rtn_modifiers"]["QuantizationModifier"]
    (group,) = quant["config_groups"].values()
    assert group["weights"] == {"num_bits": 3, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}
    assert group["targets"] == [rf"re:^model\.layers\.2\.self_attn\.{p}_proj$" for p in "qkvo"]


def test_patterns_and_quant_grids_get_their_own_groups(tiny_dir):
    plan = _plan(str(tiny_dir), MIXED)
    stage = llmcompressor_recipe(plan)["oneshot_stage"]
    assert {"wanda_modifiers", "wanda_1_modifiers"} <= set(stage)
    nm = [g["WandaPruningModifier"] for k, g in stage.items() if k.startswith("wanda")
          and g["WandaPruningModifier"]["mask_structure"] == "2:4"]
    assert len(nm) == 1 and nm[0]["targets"] == [r"re:^model\.layers\.3$"]
    gptq = stage["gptq_modifiers"]["GPTQModifier"]
    assert gptq["actorder"] is None
    assert gptq["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
    assert "group_size" not in gptq["config_groups"]["group_0"]["weights"]


def test_v1_plan_uses_the_plan_method(tiny_dir):
    plan = Plan(model_id=str(tiny_dir), config_hash="x", method="sparsegpt:sparsity=0.6", temperature=1.0, budget=2,
                strategy="kl_pred", units=[PlanUnit(unit="L1"), PlanUnit(unit="L0")], schema_version=1)
    sg = llmcompressor_recipe(plan)["oneshot_stage"]["sparsegpt_modifiers"]["SparseGPTModifier"]
    assert sg["targets"] == [r"re:^model\.layers\.0$", r"re:^model\.layers\.1$"] and sg["sparsity"] == 0.6


def test_methods_without_an_equivalent_fail_with_one_line(tiny_dir, tmp_path):
    plan = _plan(str(tiny_dir), [("L1", "drop"), ("L0", "wanda:sparsity=0.5")])
    with pytest.raises(PrunelensError, match="no llm-compressor equivalent for drop") as err:
        llmcompressor_recipe(plan)
    assert "\n" not in str(err.value)
    out = tmp_path / "r.yaml"
    path = plan.save(tmp_path / "plan.json")
    assert main([str(path), str(out)]) == 1 and not out.exists()


@pytest.mark.skipif(not LLMC_PYTHON.is_file(), reason="no llm-compressor venv (/tmp/llmc-venv)")
def test_llmcompressor_accepts_the_recipe(tiny_dir, tmp_path):
    plan = _plan(str(tiny_dir), MIXED)
    path = tmp_path / "recipe.yaml"
    write_recipe(plan, str(path))
    code = ("import json,sys\nfrom llmcompressor.recipe import Recipe\n"
            "r = Recipe.create_instance(sys.argv[1])\n"
            "print(json.dumps([[type(m).__name__, getattr(m, 'sparsity', None), getattr(m, 'targets', None)] "
            "for m in r.modifiers]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    res = subprocess.run([str(LLMC_PYTHON), "-c", code, str(path)], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    mods = json.loads(res.stdout.strip().splitlines()[-1])
    kinds = sorted(m[0] for m in mods)
    assert kinds == ["GPTQModifier", "QuantizationModifier", "SparseGPTModifier", "WandaPruningModifier",
                     "WandaPruningModifier"]
    unstructured = [m for m in mods if m[0] == "WandaPruningModifier" and isinstance(m[1], list)]
    assert unstructured and unstructured[0][1] == pytest.approx([0.4, 0.6, 0.7])


def _wanda_store(tiny_dir, tmp_path):
    from rank_helpers import synthetic_store

    from prunelens.model.loading import load_model

    loaded = load_model(str(tiny_dir))
    ds = synthetic_store(num_layers=4, methods=("wanda:sparsity=0.5", "wanda:sparsity=0.7", "drop"),
                         attrs={"model_id": loaded.model_id, "config_hash": loaded.config_hash, "prompts_hash": "p",
                                "complete": True})
    for name in [n for n in ds.data_vars if {"method", "unit"} <= set(ds[n].dims)]:
        ds[name] = ds[name].chunk({"method": 1, "unit": 1})
    path = tmp_path / "s.zarr"
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


def test_plan_cli_writes_the_recipe(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from prunelens.cli import main

    store = _wanda_store(tiny_dir, tmp_path)
    out, recipe = tmp_path / "plan.json", tmp_path / "recipe.yaml"
    res = CliRunner().invoke(main, ["plan", str(store), "--budget", "sparsity=0.55", "-T", "1.0", "--method", "wanda", "--kind", "block",
                                    "--out", str(out), "--llmcompressor", str(recipe)])
    assert res.exit_code == 0, res.output
    plan = Plan.load(out)
    mod = yaml.safe_load(recipe.read_text())["oneshot_stage"]["wanda_modifiers"]["WandaPruningModifier"]
    by_unit = {u.unit: float(u.method.split("=")[1]) for u in plan.units}
    order = sorted(by_unit, key=lambda n: int(n[1:]))
    assert mod["targets"] == [rf"re:^model\.layers\.{n[1:]}$" for n in order]
    levels = mod["sparsity"] if isinstance(mod["sparsity"], list) else [mod["sparsity"]] * len(order)
    assert levels == pytest.approx([by_unit[n] for n in order])


def test_plan_cli_refuses_a_drop_recipe_before_writing(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from prunelens.cli import main

    store = _wanda_store(tiny_dir, tmp_path)
    out, recipe = tmp_path / "plan.json", tmp_path / "recipe.yaml"
    res = CliRunner().invoke(main, ["plan", str(store), "--budget", "1", "-T", "1.0", "--method", "drop", "--kind", "block",
                                    "--out", str(out), "--llmcompressor", str(recipe)])
    assert res.exit_code != 0
    assert len(res.output.strip().splitlines()) == 1 and "no llm-compressor equivalent" in res.output
    assert not out.exists() and not recipe.exists()

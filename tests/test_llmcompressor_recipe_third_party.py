"""A third-party method that names its llm-compressor modifier exports like a built-in (no name tables)."""

from __future__ import annotations

import pytest

PLUGIN = '''
from prunelens import WeightMethod, Param, hookimpl


class Mask(WeightMethod):
    name = "thirdparty_mask"
    llmcompressor_modifier = "MagnitudePruningModifier"
    llmcompressor_family = "pruning"
    params = {"sparsity": Param(float, 0.5, "fraction zeroed")}

    def compress_weight(self, weight, stats=None):
        return weight


@hookimpl
def register_methods(register):
    register(Mask)
'''


def test_a_plugin_method_exports_under_its_own_modifier(tmp_path):
    from rank_helpers import save_tiny

    from prunelens.plan.document import Plan, PlanUnit
    from prunelens.plan.llmcompressor_recipe import llmcompressor_recipe
    from prunelens.plugins import load_plugin_file

    (tmp_path / "mask_plugin.py").write_text(PLUGIN)
    load_plugin_file(tmp_path / "mask_plugin.py")
    model = save_tiny(tmp_path / "llama", layers=2)
    units = [PlanUnit(unit="L1", method="thirdparty_mask:sparsity=0.25"), PlanUnit(unit="L0", method="thirdparty_mask")]
    plan = Plan(model_id=str(model), config_hash="x", method="mixed", temperature=1.0, budget="sparsity=0.5",
                strategy="knapsack", units=units, num_layers=2)
    stage = llmcompressor_recipe(plan)["oneshot_stage"]
    args = stage["thirdparty_mask_modifiers"]["MagnitudePruningModifier"]
    assert args["targets"] == [r"re:^model\.layers\.0$", r"re:^model\.layers\.1$"]
    assert args["sparsity"] == pytest.approx([0.5, 0.25]) and args["mask_structure"] == "0:0"
    assert "block_size" not in args  # no blocksize/percdamp parameters: no solver arguments


def test_a_modifier_without_a_family_is_refused_at_registration():
    from prunelens import WeightMethod
    from prunelens.compression.methods import method_problem

    class Half(WeightMethod):
        name = "half_declared"
        llmcompressor_modifier = "SomeModifier"

        def compress_weight(self, weight, stats=None):
            return weight

    assert method_problem(Half) == ("llmcompressor_modifier 'SomeModifier' needs llmcompressor_family "
                                    "'pruning' or 'quantization'")

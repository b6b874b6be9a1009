"""Plans as data vs planning, capabilities instead of names, and registries built once.

- a registry is built once per set of plugins: a second call asks no hook again; loading a
  plugin file (or changing PRUNELENS_OVERRIDE) rebuilds it;
- a third-party method that declares ``removes_unit`` is treated like ``drop`` by the plan
  checks, the mergekit export and budgets; one that defines ``apply`` compresses whole models;
- a ranker that declares ``spans_blocks`` chooses consecutive blocks;
- a plan ranks once: ``plan_from_store`` takes the ranking the caller already has.
"""

from __future__ import annotations

import textwrap

import pytest
import yaml
from rank_helpers import synthetic_store

from prunelens import plugins
from prunelens.compression.methods import method_registry, parse_method, removes_unit
from prunelens.errors import PrunelensError
from prunelens.plan.checks import check_plan_sane, removed_layers
from prunelens.plan.document import Plan, PlanUnit
from prunelens.plan.unit_selection import plan_from_store
from prunelens.units import Unit

PLUGIN = textwrap.dedent('''
    from contextlib import contextmanager
    from prunelens.hookspecs import hookimpl
    from prunelens.compression.methods import Method, WeightMethod
    from prunelens.plan.ranking import Ranker

    HOOK_CALLS = []

    class Excise(Method):
        """Test method: removes a unit (like drop) under another name."""
        name = "excise_{tag}"
        unit_kinds = ("block", "attn", "mlp")
        removes_unit = True

        @contextmanager
        def perturb(self, adapter, unit, stats=None):
            yield

        def apply(self, loaded, units, progress=False):
            return {{"excised": [u.name for u in units]}}

    class Halve(WeightMethod):
        """Test method: rewrites weights (no capability declared)."""
        name = "halve_{tag}"

        def compress_weight(self, weight, stats=None):
            return weight / 2

    class Tail(Ranker):
        """Test ranker: later layers are safer; plans of blocks take the last n consecutively."""
        name = "tail_{tag}"
        spans_blocks = True

        def score(self, ctx):
            return {{u.name: -float(u.layer) for u in ctx.units}}

        def consecutive_blocks(self, ctx, n):
            layers = sorted({{u.layer for u in ctx.units}})
            return [f"L{{i}}" for i in layers[-n:]]

    @hookimpl
    def register_methods(register):
        HOOK_CALLS.append("methods")
        register(Excise)
        register(Halve)

    @hookimpl
    def register_rankers(register):
        register(Tail)
''')


@pytest.fixture
def third_party(tmp_path, request):
    """Load a plugin file with a structural method, a weight method and a block-spanning ranker; unload after."""
    tag = request.node.name.replace("test_", "")[:12].replace("[", "_").replace("]", "_")
    path = tmp_path / f"cap_{tag}.py"
    path.write_text(PLUGIN.format(tag=tag))
    module = plugins.load_plugin_file(path)
    name = next(n for n, p in plugins.pm.list_name_plugin() if p is module)
    yield tag, module
    plugins.pm.unregister(name=name)
    plugins._sources.pop(name, None)
    plugins._files.pop(path.resolve(), None)


# -- registries ------------------------------------------------------------------------------
def test_registry_is_built_once_and_rebuilt_when_plugins_change(tmp_path, monkeypatch):
    method_registry()
    asked: list[str] = []
    real = plugins.collect
    monkeypatch.setattr(plugins, "collect", lambda hook, load=True: asked.append(hook) or real(hook, load))
    first = method_registry()
    assert method_registry() == first and asked == []  # cached: no hook asked again
    path = tmp_path / "later.py"
    path.write_text(PLUGIN.format(tag="later"))
    module = plugins.load_plugin_file(path)
    try:
        reg = method_registry()
        assert asked == ["register_methods"] and "excise_later" in reg and module.HOOK_CALLS == ["methods"]
        method_registry()
        assert module.HOOK_CALLS == ["methods"] and asked == ["register_methods"]  # built once per plugin set
        monkeypatch.setenv(plugins.ENV_OVERRIDE, "drop")  # the override opt-ins are part of the key
        method_registry()
        assert asked == ["register_methods"] * 2
    finally:
        name = next(n for n, p in plugins.pm.list_name_plugin() if p is module)
        plugins.pm.unregister(name=name)
        plugins._sources.pop(name, None)
    assert "excise_later" not in method_registry()  # unregistering rebuilds too


def test_a_registry_is_a_copy():
    reg = method_registry()
    reg.pop("drop")
    assert "drop" in method_registry()


# -- method capabilities ---------------------------------------------------------------------
def test_capabilities_default_for_a_third_party_method(third_party):
    tag, _ = third_party
    halve = parse_method(f"halve_{tag}")
    assert not halve.removes_unit and not halve.whole_model
    with pytest.raises(PrunelensError, match="cannot compress a whole model"):
        halve.apply(None, [Unit(0, "block")])
    excise = parse_method(f"excise_{tag}")
    assert excise.removes_unit and excise.whole_model  # defining apply() declares whole-model compression
    assert excise.apply(None, [Unit(1, "attn")]) == {"excised": ["L1.attn"]}
    assert removes_unit(f"excise_{tag}") and removes_unit("drop") and not removes_unit(f"halve_{tag}")
    assert not removes_unit("not_installed_anywhere")


def test_structural_third_party_method_is_treated_like_drop(third_party):
    tag, _ = third_party
    units = [Unit(0, "block"), Unit(1, "attn"), Unit(1, "mlp"), Unit(2, "attn")]
    for spec in ("drop", f"excise_{tag}"):
        assert removed_layers((u, spec) for u in units) == {0, 1}
    assert removed_layers((u, f"halve_{tag}") for u in units) == set()

    def plan(spec: str) -> Plan:
        return Plan(model_id="org/some-model", config_hash="h", method=spec, units=[PlanUnit("L1"), PlanUnit("L2")],
                    temperature=1.0, budget=2, strategy="kl_pred", kind="block", num_layers=5)

    dropped, excised = plan("drop"), plan(f"excise_{tag}")
    assert excised.removes_units and dropped.removes_units and not plan(f"halve_{tag}").removes_units
    config = yaml.safe_load(excised.to_mergekit_yaml())
    assert [s["sources"][0]["layer_range"] for s in config["slices"]] == [[0, 1], [3, 5]]
    assert excised.to_mergekit_yaml() == dropped.to_mergekit_yaml()
    with pytest.raises(PrunelensError, match="mergekit export is for drop plans"):
        plan(f"halve_{tag}").to_mergekit_yaml()
    every = Plan(model_id="", config_hash="h", method=f"excise_{tag}", units=[PlanUnit("L0"), PlanUnit("L1")],
                 temperature=1.0, budget=2, strategy="kl_pred")
    check_plan_sane(every)  # no model id: the layer count is unknown, nothing to refuse


def test_budget_effect_of_a_structural_method(third_party):
    from prunelens.plan.budgets import option_effect

    tag, _ = third_party
    assert option_effect(parse_method(f"excise_{tag}")) == option_effect(parse_method("drop"))
    assert option_effect(parse_method(f"excise_{tag}")).removed


# -- one ranking per plan ----------------------------------------------------------------------
@pytest.fixture
def counted(monkeypatch):
    """Count every ranker.score call of the built-in store rankers."""
    from prunelens_plugins import rankers

    calls: list[str] = []
    real = rankers._StoreRanker.score

    def score(self, ctx):
        calls.append(self.name)
        return real(self, ctx)

    monkeypatch.setattr(rankers._StoreRanker, "score", score)
    return calls


CHOICES = dict(method="drop", kind="block", temperature=0.7, by="kl_pred", locality="propagated",
               timing="teacher_forced")


def test_plan_from_store_ranks_once_or_not_at_all(counted):
    from prunelens.plan.ranking import rank_units, store_means, store_units

    ds = synthetic_store(num_layers=6, seed=4)
    plan = plan_from_store(ds, budget=2, **CHOICES)
    assert counted == ["kl_pred"]
    ranked = rank_units(ds, **CHOICES)
    assert counted == ["kl_pred"] * 2
    again = plan_from_store(ds, budget=2, ranking=ranked, **CHOICES)
    assert counted == ["kl_pred"] * 2  # the ranking passed in is used, not recomputed
    assert again.unit_names == plan.unit_names
    units = store_units(ds, "block")
    kl_pred = store_means(ds, method="drop", temperature=0.7, locality="propagated", timing="teacher_forced",
                          units=units)["kl_pred"]
    safest = [u.name for _, u in sorted(zip(kl_pred, units), key=lambda p: p[0])][:2]
    assert plan.unit_names == safest
    assert plan.units[0].predicted_kl == pytest.approx(min(kl_pred))
    with pytest.raises(PrunelensError, match="temperature"):
        plan_from_store(ds, budget=2, ranking=ranked, **{**CHOICES, "temperature": 1.0})


def test_tui_backend_ranks_once_per_click(counted):
    from prunelens_tui import backend

    ds = synthetic_store(num_layers=4, seed=1)
    ranked = backend.rank_units(ds, **CHOICES)
    plan = backend.plan_from_store(ds, ranked, budget="2", store_path="s.zarr", **CHOICES)
    assert counted == ["kl_pred"] and len(plan.units) == 2
    assert backend.exports_mergekit(plan)


def test_a_block_spanning_ranker_plans_consecutive_blocks(third_party):
    tag, _ = third_party
    ds = synthetic_store(num_layers=6, seed=2)
    plan = plan_from_store(ds, budget=3, **{**CHOICES, "by": f"tail_{tag}"})
    assert plan.unit_names == ["L3", "L4", "L5"]
    one_by_one = plan_from_store(ds, budget=3, consecutive=False, **{**CHOICES, "by": f"tail_{tag}"})
    assert one_by_one.unit_names == ["L5", "L4", "L3"]  # its scores, safest first
    with pytest.raises(PrunelensError, match="does not choose consecutive blocks"):
        plan_from_store(ds, budget=3, consecutive=True, **CHOICES)

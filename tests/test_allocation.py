"""Level sweeps, budgets, the knapsack allocator (vs brute force), OWL, plan schema 2, mixed apply."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
from rank_helpers import random_ids, save_tiny, synthetic_store

from prunelens.compression.methods import expand_method_specs, expand_methods, parse_method
from prunelens.errors import PrunelensError
from prunelens.model.loading import load_model
from prunelens.plan.allocation import AllocContext, allocate_plan, layer_combinations, solve_mckp, store_options
from prunelens.plan.budgets import Budget, option_effect, parse_budget_spec, unit_sizes
from prunelens.plan.document import Plan
from prunelens.units import Unit

SPECS = ["drop", "wanda:sparsity=0.3", "wanda:sparsity=0.5", "wanda:sparsity=0.7", "rtn:bits=2", "rtn:bits=3",
         "rtn:bits=4", "rtn:bits=8"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("alloc") / "llama4", layers=4)


@pytest.fixture
def loaded(tiny_dir):
    return load_model(str(tiny_dir))


def _store(loaded, methods=SPECS, seed=0, kinds=("block", "attn", "mlp")):
    return synthetic_store(num_layers=4, kinds=kinds, methods=methods, seed=seed,
                           attrs={"model_id": loaded.model_id, "config_hash": loaded.config_hash, "prompts_hash": "p0",
                                  "complete": True})


def _kl(ds, method, unit, t=0.7):
    a = ds["kl_pred"].sel({"method": method, "unit": unit, "locality": "propagated", "timing": "teacher_forced",
                           "temperature": t}).values
    return float(np.asarray(a, dtype=np.float64).mean())


# -- level sweeps ------------------------------------------------------------------------------
def test_level_sweep_expands_to_one_spec_per_level():
    assert expand_method_specs("wanda:sparsity=0.3,0.5,0.7,0.9") == [
        "wanda:sparsity=0.3", "wanda:sparsity=0.5", "wanda:sparsity=0.7", "wanda:sparsity=0.9"]
    methods = expand_methods("rtn:bits=2,3,8,group_size=64")
    assert [(m.bits, m.group_size) for m in methods] == [(2, 64), (3, 64), (8, 64)]
    assert [m.sparsity for m in expand_methods("sparsegpt:sparsity=0.6,0.7")] == [0.6, 0.7]
    assert expand_method_specs("drop") == ["drop"]
    assert [m.pattern for m in expand_methods("wanda:pattern=2:4")] == ["2:4"]


@pytest.mark.parametrize("text, match", [
    ("wanda:pattern=2:4,1:4", "only numeric parameters sweep"),
    ("wanda:0.5", "expected key=value"),
    ("rtn:bits=2,2", "repeated"),
    ("rtn:bits=2,9", "bits must lie in 2..8"),
    ("nosuch:x=1,2", "unknown method"),
])
def test_level_sweep_errors(text, match):
    with pytest.raises(PrunelensError, match=match):
        expand_methods(text)


# -- budgets -----------------------------------------------------------------------------------
def test_budget_parsing():
    assert parse_budget_spec("sparsity=0.6") == Budget("sparsity", 0.6)
    assert parse_budget_spec("bits=3.5") == Budget("bits", 3.5)
    assert parse_budget_spec("bytes=1.5MiB") == Budget("bytes", float(int(1.5 * 2**20)))
    assert parse_budget_spec("4") == Budget("units", 4.0) and parse_budget_spec(4) == Budget("units", 4.0)
    assert parse_budget_spec("0.1") == Budget("params", 0.1)
    assert parse_budget_spec("units=2").text == "units=2"


def test_sizes_and_effects_match_an_independent_count(loaded):
    sizes = unit_sizes(loaded)
    lin = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)]
    decoder = sum(m.weight.numel() for m in lin) - loaded.model.lm_head.weight.numel()
    assert sizes.linear_total == decoder
    assert sizes.linear["L1"] == sizes.linear["L1.attn"] + sizes.linear["L1.mlp"]
    assert sizes.model_params == sum(p.numel() for p in loaded.model.parameters())
    assert unit_sizes(loaded.model_id).linear == sizes.linear  # meta model from the config: same counts
    assert option_effect(parse_method("wanda:pattern=2:4")).zero_fraction == 0.5
    assert option_effect(parse_method("rtn:bits=3")).bits == 3
    assert option_effect(parse_method("drop")).removed


# -- the solver --------------------------------------------------------------------------------
def _brute(groups, required):
    best = math.inf
    for combo in itertools.product(*[range(len(g)) for g in groups]):
        if sum(groups[i][k][0] for i, k in enumerate(combo)) >= required - 1e-12:
            best = min(best, sum(groups[i][k][1] for i, k in enumerate(combo)))
    return best


@pytest.mark.parametrize("integral", [True, False])
def test_knapsack_matches_brute_force(integral):
    rng = random.Random(1 if integral else 2)
    checked = 0
    for _ in range(150):
        groups = [[(0.0, 0.0)] + [(float(rng.randint(0, 6)) if integral else rng.uniform(0, 6), rng.uniform(0, 3))
                                  for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 5))]
        reach = sum(max(s for s, _ in g) for g in groups)
        required = rng.uniform(0.5, reach + 1)
        required = float(math.ceil(required)) if integral else required
        best = _brute(groups, required)
        if best == math.inf:
            with pytest.raises(PrunelensError, match="no choice of options meets the budget"):
                solve_mckp(groups, required)
            continue
        picks, info = solve_mckp(groups, required, resolution=2000)
        cost = sum(groups[i][k][1] for i, k in enumerate(picks))
        assert sum(groups[i][k][0] for i, k in enumerate(picks)) >= required - 1e-9  # feasible
        assert cost == pytest.approx(info["cost"], abs=1e-12)
        assert info["lower_bound"] - 1e-9 <= best <= cost + 1e-9
        assert cost - best <= info["gap"] + 1e-9
        if integral:
            assert cost == pytest.approx(best, abs=1e-12) and info["gap"] == 0
        else:
            assert cost - best <= 0.05 * max(best, 1e-3) + 1e-9  # a fine grid is near exact
        checked += 1
    assert checked > 50


def test_knapsack_allocation_is_optimal_and_never_takes_a_block_with_its_sublayers(loaded):
    ds = _store(loaded, methods=["drop", "wanda:sparsity=0.5", "wanda:sparsity=0.7"])
    # make every block option look free: a solver that ignored the exclusion would pair blocks with sublayers
    ds["kl_pred"].loc[{"unit": [f"L{i}" for i in range(4)]}] = 1e-6
    for budget in ("sparsity=0.4", "sparsity=0.6", "units=5"):
        plan = allocate_plan(ds, allocator="knapsack", budget=budget, temperature=0.7, loaded=loaded)
        by_layer: dict[int, list[str]] = {}
        for u in plan.unit_objects():
            by_layer.setdefault(u.layer, []).append(u.kind)
        assert all(k == ["block"] or "block" not in k for k in by_layer.values()), by_layer
        # brute force over every unit's options, rejecting block + sublayer of the same layer
        ctx = AllocContext(ds, parse_budget_spec(budget), 0.7, loaded=loaded)
        options = store_options(ctx)
        per_layer = [layer_combinations(options.get(i, [])) for i in range(4)]
        need = {"sparsity=0.4": 0.4, "sparsity=0.6": 0.6}.get(budget)
        required = 5 if need is None else need * unit_sizes(loaded).linear_total
        best = _brute([[(sum(o.saving for o in c), sum(o.predicted_kl for o in c)) for c in cs] for cs in per_layer],
                      required)
        assert plan.predicted_kl_total == pytest.approx(best, rel=1e-9)
        expect = sum(_kl(ds, u.method, u.unit) for u in plan.units)
        assert plan.predicted_kl_total == pytest.approx(expect, rel=1e-6)  # the store's numbers, summed


def test_uniform_and_owl(loaded):
    ds = _store(loaded, methods=["wanda:sparsity=0.5", "wanda:sparsity=0.6"])
    plan = allocate_plan(ds, allocator="uniform", budget="sparsity=0.6", temperature=0.7, methods=["wanda"],
                         loaded=loaded)
    assert {u.method for u in plan.units} == {"wanda:sparsity=0.6"} and plan.unit_names == ["L0", "L1", "L2", "L3"]
    assert plan.allocation["achieved"] == pytest.approx(0.6)
    assert plan.predicted_kl_total == pytest.approx(sum(_kl(ds, "wanda:sparsity=0.6", f"L{i}") for i in range(4)))
    ids = random_ids(batch=6, length=16, seed=3)
    plan = allocate_plan(ds, allocator="owl", budget="sparsity=0.6", temperature=0.7,
                         methods=["wanda"], loaded=loaded, calib_ids=ids, M=3, lmbda=0.1)
    # independent: Wanda scores per block from a plain forward pass with hooks
    norms: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in loaded.model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            def hook(_m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                norms[name] = norms.get(name, 0) + (x * x).sum(0)
            hooks.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        loaded.model(input_ids=ids)
    for h in hooks:
        h.remove()
    ratios = []
    for i in range(4):
        s = torch.cat([(m.weight.abs() * norms[n].sqrt()).flatten() for n, m in loaded.model.named_modules()
                       if n in norms and f".layers.{i}." in n])
        ratios.append(float((s > 3 * s.mean()).float().mean()))
    r = np.array(ratios)
    want = 0.6 - ((r - r.min()) / (r.max() - r.min()) * 0.2 - ((r - r.min()) / (r.max() - r.min()) * 0.2).mean())
    got = [parse_method(u.method).sparsity for u in plan.units]
    assert got == pytest.approx(want, abs=1e-4)
    assert np.mean(got) == pytest.approx(0.6, abs=1e-4) and max(got) - min(got) == pytest.approx(0.2, abs=2e-4)


# -- plan schema -------------------------------------------------------------------------------
def test_schema_1_plans_load(loaded, tmp_path):
    v1 = {"schema_version": 1, "model_id": loaded.model_id, "config_hash": loaded.config_hash,
          "method": "wanda:sparsity=0.5", "method_params": {"sparsity": 0.5, "pattern": None},
          "units": [{"unit": "L1.mlp", "score": 0.1, "predicted_kl": 0.1, "params": 10, "cumulative_predicted_kl": 0.1,
                     "cumulative_measured_kl": None}, {"unit": "L2"}],
          "temperature": 0.7, "budget": 2, "strategy": "kl_pred", "kind": None, "locality": "propagated",
          "timing": "teacher_forced", "iterative": False, "num_layers": 4, "store_path": None, "prompts_hash": None,
          "predicted_kl_total": 0.1, "measured_kl_total": None, "measured": {}, "eval": {},
          "created": "2026-01-01T00:00:00+00:00"}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    plan = Plan.load(path)
    assert plan.unit_methods() == [(Unit(1, "mlp"), "wanda:sparsity=0.5"), (Unit(2, "block"), "wanda:sparsity=0.5")]
    assert not plan.is_mixed and plan.budget == 2
    plan.save(tmp_path / "v2.json")
    again = json.loads((tmp_path / "v2.json").read_text())
    assert again["schema_version"] == 2 and Plan.load(tmp_path / "v2.json") == plan


def test_mixed_plan_round_trips(loaded, tmp_path):
    plan = allocate_plan(_store(loaded), allocator="knapsack", budget="bits=3.5", temperature=0.7, methods=["rtn"],
                         loaded=loaded)
    plan.save(tmp_path / "p.json")
    again = Plan.load(tmp_path / "p.json")
    assert again == plan and again.allocation["budget"] == "bits=3.5" and again.allocation["achieved"] <= 3.5
    assert all(u.method.startswith("rtn") for u in again.units)


# -- applying ---------------------------------------------------------------------------------
MIXED = [("L0.attn", "wanda:sparsity=0.5"), ("L0.mlp", "sparsegpt:sparsity=0.6"), ("L1", "rtn:bits=3"),
         ("L2.attn", "drop"), ("L2.mlp", "wanda:sparsity=0.7"), ("L3", "gptq:bits=4")]


def test_mixed_plan_equals_its_units_applied_one_by_one(tiny_dir):
    from prunelens.compression.per_unit import compress_mixed
    from prunelens.compression.sequential import compress_model

    ids = random_ids(batch=6, length=16, seed=5)
    a, b = load_model(str(tiny_dir)), load_model(str(tiny_dir))
    summary = compress_mixed(a, [(Unit.parse(u), parse_method(s)) for u, s in MIXED], calib_ids=ids, progress=False)
    for u, s in MIXED:  # in plan order, each on the model the previous ones already compressed
        compress_model(b, parse_method(s), [Unit.parse(u)], calib_ids=ids, progress=False)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)
    dense = load_model(str(tiny_dir)).model.state_dict()
    changed = {k for k in sa if not torch.equal(sa[k], dense[k])}
    assert any("layers.3." in k for k in changed) and any("layers.0.self_attn" in k for k in changed)
    assert not sa["model.layers.2.self_attn.o_proj.weight"].any()  # the dropped attention
    assert summary["dropped_sublayers"] == ["L2.attn"]
    w = sa["model.layers.2.mlp.down_proj.weight"]
    assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.02)


def test_apply_mixed_plan_with_a_block_drop_reports_zeros_and_bytes(tiny_dir, tmp_path):
    from prunelens.plan.apply import apply_plan
    from prunelens.plan.document import PlanUnit

    base = load_model(str(tiny_dir))
    units = [PlanUnit(unit="L0", method="wanda:sparsity=0.5"), PlanUnit(unit="L1", method="drop"),
             PlanUnit(unit="L3.mlp", method="rtn:bits=4")]
    plan = Plan(model_id=base.model_id, config_hash=base.config_hash, method="mixed", units=units, temperature=1.0,
                budget="sparsity=0.3", strategy="manual", num_layers=4)
    out, summary = apply_plan(plan, tmp_path / "ck", calib_samples=4, calib_len=16, progress=False)
    ck = load_model(str(out))
    assert ck.adapter.num_layers == 3 and summary["dropped_blocks"] == ["L1"]
    lin = [m for n, m in ck.model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    zeros, total = sum(int((m.weight == 0).sum()) for m in lin), sum(m.weight.numel() for m in lin)
    assert summary["zero_fraction"] == pytest.approx(zeros / total)
    assert summary["linear_zero_or_removed"] == pytest.approx((zeros + total / 3) / (total * 4 / 3))
    assert summary["checkpoint_bytes"] == sum(f.stat().st_size for f in out.glob("*.safetensors"))


# -- errors ------------------------------------------------------------------------------------
def _cli_store(loaded, tmp_path):
    path = tmp_path / "s.zarr"
    ds = _store(loaded, methods=["wanda:sparsity=0.5", "wanda:sparsity=0.7", "rtn:bits=3"])
    for name in [n for n in ds.data_vars if {"method", "unit"} <= set(ds[n].dims)]:
        ds[name] = ds[name].chunk({"method": 1, "unit": 1})  # one chunk per cell, as the probe writes them
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


@pytest.mark.parametrize("budget, match", [
    ("sparsity=1.2", "strictly between 0 and 1"),
    ("bits=0", r"average bits per weight must lie in \(0, 32\]"),
    ("speed=2", "unknown budget 'speed'"),
    ("sparsity=0.8", "cannot be met"),  # the store's wanda levels reach 0.7 at most
    ("bits=2", "cannot be met"),  # rtn:bits=3 everywhere is 3 bits on average
])
def test_bad_budgets_give_one_line_errors(loaded, tmp_path, budget, match):
    from click.testing import CliRunner

    from prunelens.cli import main

    store = _cli_store(loaded, tmp_path)
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(main, ["plan", str(store), "--budget", budget, "-T", "0.7", "--method", "wanda+rtn",
                                    "--out", str(out)])
    assert res.exit_code != 0
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and text.startswith("Error:"), text
    assert __import__("re").search(match, text), text
    assert not out.exists()


def test_plan_cli_allocates(loaded, tmp_path):
    from click.testing import CliRunner

    from prunelens.cli import main

    store = _cli_store(loaded, tmp_path)
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(main, ["plan", str(store), "--allocator", "knapsack", "--budget", "sparsity=0.55",
                                    "-T", "0.7", "--method", "wanda", "--out", str(out)])
    assert res.exit_code == 0, res.output
    plan = Plan.load(out)
    assert plan.strategy == "knapsack" and plan.allocation["achieved"] >= 0.55
    assert {u.method for u in plan.units} <= {"wanda:sparsity=0.5", "wanda:sparsity=0.7"}


def test_probe_sweep_then_allocate_apply_validate(tiny_dir, tmp_path):
    """End to end on a tiny model: a level sweep probe, a bits-budget knapsack plan, apply, validate."""
    from click.testing import CliRunner

    from prunelens.cli import main
    from prunelens.plan.apply import apply_plan, validate_plan
    from prunelens.plan.ranking import load_store

    store = tmp_path / "sweep.zarr"
    res = CliRunner().invoke(main, ["probe", "--model", str(tiny_dir), "--method", "rtn:bits=2,3,8", "--units", "block",
                                    "--samples", "3", "--steps", "3", "--prompt-len", "4", "--temperature", "1",
                                    "--locality", "propagated", "--timing", "teacher_forced", "--out", str(store),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    ds = load_store(store)
    assert [str(m) for m in ds["method"].values] == [parse_method(f"rtn:bits={b}").spec for b in (2, 3, 8)]
    plan = allocate_plan(ds, allocator="knapsack", budget="bits=10", temperature=1.0, store_path=str(store))
    assert plan.allocation["achieved"] <= 10 + 1e-9 and plan.allocation["gap"] >= 0
    bits = {u.unit: parse_method(u.method).bits for u in plan.units}
    sizes = unit_sizes(load_model(str(tiny_dir)))
    dense = sizes.linear_total - sum(sizes.linear[u] for u in bits)
    avg = (16 * dense + sum(b * sizes.linear[u] for u, b in bits.items())) / sizes.linear_total
    assert plan.allocation["achieved"] == pytest.approx(avg)
    out, summary = apply_plan(plan, tmp_path / "ck", progress=False)
    rows = validate_plan(plan, ds, checkpoint=out)
    assert rows[-1]["unit"] == "checkpoint" and rows[-1]["measured_kl"] >= 0
    # rtn needs no calibration: the cumulative replay of every unit equals the checkpoint
    assert rows[-2]["measured_kl"] == pytest.approx(rows[-1]["measured_kl"], rel=1e-4, abs=1e-7)


def test_knapsack_on_measured_kl(loaded):
    ds = _store(loaded, methods=["wanda:sparsity=0.5", "wanda:sparsity=0.7"])
    plan = allocate_plan(ds, allocator="knapsack", budget="sparsity=0.6", temperature=1.0, loaded=loaded, score="kl")
    kl = {(u.unit, u.method): float(np.asarray(ds["kl"].sel({"method": u.method, "unit": u.unit,
                                                              "locality": "propagated", "timing": "teacher_forced",
                                                              "temperature": 1.0}).values, dtype=np.float64).mean())
          for u in plan.units}
    assert plan.predicted_kl_total == pytest.approx(sum(kl.values()), rel=1e-6)
    assert plan.allocation["params"]["score"] == "kl" and plan.allocation["achieved"] >= 0.6
    with pytest.raises(PrunelensError, match="score must be kl_pred or kl"):
        allocate_plan(ds, allocator="knapsack", budget="sparsity=0.6", temperature=1.0, loaded=loaded, score="x")


def test_knapsack_band_keeps_every_level_near_the_target(loaded):
    ds = _store(loaded, methods=["drop", "wanda:sparsity=0.3", "wanda:sparsity=0.5", "wanda:sparsity=0.7",
                                 "wanda:sparsity=0.9"])
    free = allocate_plan(ds, allocator="knapsack", budget="sparsity=0.6", temperature=0.7, loaded=loaded)
    banded = allocate_plan(ds, allocator="knapsack", budget="sparsity=0.6", temperature=0.7, loaded=loaded, band=0.1)
    levels = [option_effect(parse_method(u.method)).zero_fraction for u in banded.units]
    assert all(abs(z - 0.6) <= 0.1 + 1e-9 for z in levels)
    covered = {}
    for u in banded.unit_objects():
        covered.setdefault(u.layer, set()).add(u.kind)
    assert all(k == {"block"} or k == {"attn", "mlp"} for k in covered.values()) and len(covered) == 4
    assert banded.allocation["achieved"] >= 0.6 and banded.predicted_kl_total >= free.predicted_kl_total - 1e-12
    # the band is a restriction of the same problem: brute force over in-band whole-layer choices agrees
    ctx = AllocContext(ds, parse_budget_spec("sparsity=0.6"), 0.7, loaded=loaded)
    opts = store_options(ctx)
    groups = []
    for i in range(4):
        inband = [o for o in opts[i] if o.method in ("wanda:sparsity=0.5", "wanda:sparsity=0.7")]
        cs = [c for c in layer_combinations(inband) if c and ({Unit.parse(o.unit).kind for o in c} >= {"attn", "mlp"}
                                                               or any(Unit.parse(o.unit).kind == "block" for o in c))]
        groups.append([(sum(o.saving for o in c), sum(o.predicted_kl for o in c)) for c in cs])
    assert banded.predicted_kl_total == pytest.approx(_brute(groups, 0.6 * unit_sizes(loaded).linear_total), rel=1e-9)
    with pytest.raises(PrunelensError, match="band applies to sparsity or bits"):
        allocate_plan(ds, allocator="knapsack", budget="units=2", temperature=0.7, loaded=loaded, band=0.1)


def test_iterative_knapsack_fixes_front_layers_and_reprobes_the_rest(loaded):
    import copy

    from prunelens.compression.per_unit import compress_mixed
    from prunelens.plan.apply import store_prompt_ids
    from prunelens.probe.engine import ProbeEngine, ProbeSettings
    from prunelens.probe.prompts import Prompts

    ds = _store(loaded, methods=["rtn:bits=2", "rtn:bits=3", "rtn:bits=8"], kinds=("block",))
    ids = random_ids(batch=4, length=16, seed=9)
    once = allocate_plan(ds, allocator="knapsack", budget="bits=8", temperature=1.0, loaded=loaded)
    plan = allocate_plan(ds, allocator="iterative", budget="bits=8", temperature=1.0, loaded=loaded, calib_ids=ids,
                         rounds=2)
    assert plan.allocation["achieved"] <= 8 + 1e-9 and len(plan.allocation["rounds"]) == 2
    front = {u.unit: u.method for u in once.units if Unit.parse(u.unit).layer < 2}
    assert {u.unit: u.method for u in plan.units if Unit.parse(u.unit).layer < 2} == front  # round 1 fixed these
    for u in plan.units:  # front layers keep the store's prediction
        if Unit.parse(u.unit).layer < 2:
            assert u.predicted_kl == pytest.approx(_kl(ds, u.method, u.unit, t=1.0), rel=1e-6)
    back = [u for u in plan.units if Unit.parse(u.unit).layer >= 2]
    assert back
    # independently: compress the front choices, probe one back option on that model with the probe engine
    work = copy.deepcopy(loaded)
    compress_mixed(work, [(Unit.parse(k), parse_method(v)) for k, v in front.items()], calib_ids=ids, progress=False)
    engine = ProbeEngine(work.adapter, Prompts(store_prompt_ids(ds)), ProbeSettings(
        steps=int(ds.sizes["step"]), temperatures=(1.0,), localities=("propagated",), timings=("teacher_forced",)))
    engine.prepare()
    u = back[0]
    want = float(np.nanmean(engine.measure(parse_method(u.method), Unit.parse(u.unit)).arrays["kl_pred"]))
    assert u.predicted_kl == pytest.approx(want, rel=1e-6)
    assert u.predicted_kl != pytest.approx(_kl(ds, u.method, u.unit, t=1.0), rel=1e-3)  # re-probed, not the store's
    # the loaded model was not modified
    assert torch.equal(loaded.model.model.layers[0].self_attn.q_proj.weight,
                       load_model(loaded.model_id).model.model.layers[0].self_attn.q_proj.weight)


def test_report_shows_a_mixed_plan(loaded, tmp_path):
    from prunelens.workflow.report import write_report

    ds = _store(loaded, methods=["wanda:sparsity=0.5", "wanda:sparsity=0.7", "drop"])
    plan = allocate_plan(ds, allocator="knapsack", budget="sparsity=0.6", temperature=0.7, loaded=loaded)
    assert plan.is_mixed or plan.method != "mixed"
    path = write_report(ds, tmp_path / "rep", plan=plan)
    text = path.read_text()
    assert "## Plan" in text and all(u.unit in text for u in plan.units)
    if plan.is_mixed:
        assert "| method |" in text.replace("|method|", "| method |")


def test_uniform_plan_applied_mixed_or_whole_is_the_same(tiny_dir):
    """Uniform (one spec: compress_model) and per-block plans (compress_mixed) differ only in the allocation."""
    from prunelens.compression.per_unit import compress_mixed
    from prunelens.compression.sequential import compress_model

    ids = random_ids(batch=4, length=16, seed=2)
    a, b = load_model(str(tiny_dir)), load_model(str(tiny_dir))
    blocks = [Unit(i, "block") for i in range(4)]
    compress_model(a, parse_method("sparsegpt:sparsity=0.6"), blocks, calib_ids=ids, progress=False)
    compress_mixed(b, [(u, parse_method("sparsegpt:sparsity=0.6")) for u in blocks], calib_ids=ids, progress=False)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)


def test_mixed_plan_with_a_block_drop_equals_one_by_one_with_renumbering(tiny_dir):
    """A dropped block ahead of calibrated units: later layers calibrate on the model without it."""
    from prunelens.compression.per_unit import compress_mixed
    from prunelens.compression.sequential import compress_model

    ids = random_ids(batch=4, length=16, seed=4)
    a, b = load_model(str(tiny_dir)), load_model(str(tiny_dir))
    plan = [("L0", "wanda:sparsity=0.5"), ("L1", "drop"), ("L3.mlp", "sparsegpt:sparsity=0.7")]
    compress_mixed(a, [(Unit.parse(u), parse_method(s)) for u, s in plan], calib_ids=ids, progress=False)
    compress_model(b, parse_method("wanda:sparsity=0.5"), [Unit(0, "block")], calib_ids=ids, progress=False)
    compress_model(b, parse_method("drop"), [Unit(1, "block")], calib_ids=ids, progress=False)
    compress_model(b, parse_method("sparsegpt:sparsity=0.7"), [Unit(2, "mlp")], calib_ids=ids, progress=False)  # old L3
    assert a.adapter.num_layers == b.adapter.num_layers == 3
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)


def test_bytes_budget_drops_blocks_and_the_checkpoint_fits(loaded, tmp_path):
    from safetensors import safe_open

    from prunelens.plan.apply import apply_plan

    sizes = unit_sizes(loaded)
    block = sizes.params["L0"] * sizes.bytes_per_param
    budget = sizes.model_bytes - int(1.5 * block)
    ds = _store(loaded, methods=["drop", "wanda:sparsity=0.5"])
    plan = allocate_plan(ds, allocator="knapsack", budget=f"bytes={budget}", temperature=0.7, loaded=loaded)
    assert all(u.method == "drop" and Unit.parse(u.unit).kind == "block" for u in plan.units)  # nothing else saves bytes
    assert len(plan.units) == 2 and plan.allocation["achieved"] <= budget
    out, summary = apply_plan(plan, tmp_path / "ck", progress=False)
    stored = 0
    for f in out.glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            assert {sf.get_slice(k).get_dtype() for k in sf.keys()} == {"F32"}
            stored += 4 * sum(int(np.prod(sf.get_slice(k).get_shape())) for k in sf.keys())
    assert stored <= budget and summary["checkpoint_bytes"] >= stored  # the files add only their headers

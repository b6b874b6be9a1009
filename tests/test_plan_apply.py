"""Plans: selection, JSON round trip and its errors, mergekit export, apply -> plain transformers, validation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from rank_helpers import save_tiny, synthetic_store

from prunelens.errors import PrunelensError
from prunelens.model.info import unit_param_counts
from prunelens.model.loading import load_model
from prunelens.plan.document import Plan, parse_budget
from prunelens.plan.unit_selection import iterative_plan, plan_from_store, safest_units


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama4", layers=4)


@pytest.fixture
def loaded(tiny_dir):
    return load_model(str(tiny_dir))


def _store(loaded, seed=0):
    return synthetic_store(num_layers=4, seed=seed, attrs={"model_id": loaded.model_id, "config_hash": loaded.config_hash,
                                                           "prompts_hash": "p0"})


def _mean(ds, unit, var="kl_pred", t=0.7):
    a = ds[var].sel({"method": "drop", "unit": unit, "locality": "propagated", "timing": "teacher_forced",
                     "temperature": t}).values
    return float(np.asarray(a, dtype=np.float64).mean())


def test_one_shot_plan_takes_the_lowest_predicted_kl(loaded):
    ds = _store(loaded, seed=1)
    plan = plan_from_store(ds, method="drop", kind="attn", temperature=0.7, by="kl_pred", budget=2, store_path="x.zarr")
    means = {f"L{i}.attn": _mean(ds, f"L{i}.attn") for i in range(4)}
    expected = sorted(means, key=means.get)[:2]
    assert plan.unit_names == expected
    assert [u.predicted_kl for u in plan.units] == pytest.approx([means[u] for u in expected], rel=1e-6)
    assert plan.predicted_kl_total == pytest.approx(sum(means[u] for u in expected), rel=1e-6)
    assert plan.num_layers == 4 and plan.config_hash == loaded.config_hash and plan.store_path == "x.zarr"


def test_plan_json_round_trip_is_canonical(loaded, tmp_path):
    plan = plan_from_store(_store(loaded), method="drop", kind="block", temperature=1.0, by="kl", budget=1)
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again == plan
    assert again.to_json() == path.read_text()
    assert json.loads(path.read_text())["schema_version"] == 2
    assert not list(tmp_path.glob(".plan.json.*"))  # no temp file left behind


def test_plan_load_rejects_bad_plans(loaded, tmp_path):
    plan = plan_from_store(_store(loaded), method="drop", kind="attn", temperature=0.7, by="kl_pred", budget=2)
    d = plan.to_dict()

    def write(obj):
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(obj))
        return p

    with pytest.raises(PrunelensError, match="schema version 99 is not supported"):
        Plan.load(write({**d, "schema_version": 99}))
    with pytest.raises(PrunelensError, match="missing field.*budget"):
        Plan.load(write({k: v for k, v in d.items() if k != "budget"}))
    with pytest.raises(PrunelensError, match="bad unit name"):
        Plan.load(write({**d, "units": [{"unit": "layer3"}]}))
    with pytest.raises(PrunelensError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        Plan.load(tmp_path / "x.json")
    with pytest.raises(PrunelensError, match="plan file not found"):
        Plan.load(tmp_path / "nope.json")
    wrong_hash = Plan.load(write({**d, "config_hash": "0000"}))
    with pytest.raises(PrunelensError, match="config hash 0000"):
        wrong_hash.validate_for(loaded)
    missing_unit = Plan.load(write({**d, "units": [{"unit": "L9.attn"}]}))
    with pytest.raises(PrunelensError, match="L9.attn do not exist"):
        missing_unit.validate_for(loaded)


def test_mergekit_yaml_kept_ranges_match_the_plan(loaded):
    import yaml

    from prunelens.plan.document import PlanUnit

    plan = plan_from_store(_store(loaded), method="drop", kind="block", temperature=0.7, by="kl_pred", budget=1)
    for dropped in ([1], [0, 3], [1, 2], [3]):
        plan.units = [PlanUnit(f"L{i}") for i in dropped]
        plan.num_layers = 6
        cfg = yaml.safe_load(plan.to_mergekit_yaml())
        got = [tuple(s["sources"][0]["layer_range"]) for s in cfg["slices"]]
        kept = [i for i in range(6) if i not in dropped]
        runs = [list(g) for _, g in itertools.groupby(kept, key=lambda i, c=itertools.count(): i - next(c))]
        assert got == [(r[0], r[-1] + 1) for r in runs]
        assert cfg["merge_method"] == "passthrough"
        assert all(s["sources"][0]["model"] == plan.model_id for s in cfg["slices"])
    plan.units = [PlanUnit("L1.attn")]
    with pytest.raises(PrunelensError, match="only block-drop plans"):
        plan.to_mergekit_yaml()


def test_budgets_by_count_and_parameter_fraction(loaded):
    assert parse_budget("3") == 3 and parse_budget("0.25") == 0.25 and parse_budget(2.0) == 2
    for bad in ("0", "1.5", "-1", "x", True):
        with pytest.raises(PrunelensError):
            parse_budget(bad)
    from prunelens.units import all_units

    units = all_units(4)
    counts, total = unit_param_counts(loaded.model_id, units)  # from a meta model
    real = {u.name: sum(p.numel() for p in loaded.adapter.module(u).parameters()) for u in units}
    assert counts == real and total == sum(p.numel() for p in loaded.model.parameters())
    order = ["L2", "L2.attn", "L0.mlp", "L1", "L3.attn", "L0.attn"]
    chosen = safest_units(order, 0.3, counts, total)
    # by hand: skip overlaps (L2.attn inside L2), skip what does not fit
    exp, used = [], 0
    for name in order:
        layer = name.split(".")[0]
        if any(c.split(".")[0] == layer and ("." not in c or "." not in name or c == name) for c in exp):
            continue
        if used + counts[name] <= 0.3 * total:
            exp.append(name)
            used += counts[name]
    assert chosen == exp and sum(counts[c] for c in chosen) <= 0.3 * total
    assert safest_units(order, 2) == ["L2", "L0.mlp"]


def _dense_step_logits(model, ds):
    ids = torch.as_tensor(ds["tokens"].values)
    plen = int(ds["prompt_len"].values[0])
    with torch.no_grad():
        z = model(input_ids=ids).logits.double()
    return z[:, plen - 1 : plen - 1 + ds.sizes["step"]]


def test_apply_block_plan_loads_and_generates_in_plain_transformers(loaded, tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunelens.compression.methods import parse_method
    from prunelens.plan.apply import apply_plan, perturbed

    ds = _store(loaded, seed=2)
    plan = plan_from_store(ds, method="drop", kind="block", temperature=0.7, by="kl_pred", budget=2)
    out, summary = apply_plan(plan, tmp_path / "ckpt", progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no prunelens code
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    ids = torch.tensor([[5, 6, 7, 8]])
    gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 10)
    # the checkpoint computes what the dense model computes with those blocks dropped (independent path)
    dense = load_model(str(tiny_dir))
    with perturbed(parse_method("drop"), dense.adapter, plan.unit_objects()), torch.no_grad():
        want = dense.model(input_ids=ids).logits
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    meta = json.loads((out / "prunelens.json").read_text())
    assert meta["plan"]["units"][0]["unit"] == plan.unit_names[0]


def test_apply_sublayer_plan_and_validate_predicted_vs_measured(loaded, tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunelens.plan.apply import apply_plan, validate_plan

    ds = _store(loaded, seed=3)
    plan = plan_from_store(ds, method="drop", kind="attn", temperature=0.7, by="kl_pred", budget=2)
    out, _ = apply_plan(plan, tmp_path / "ckpt", progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generate(torch.tensor([[4, 9, 3]]), max_new_tokens=5, do_sample=False, pad_token_id=0).shape == (1, 8)
    rows = validate_plan(plan, ds, checkpoint=out)
    assert [r["unit"] for r in rows] == plan.unit_names + ["checkpoint"]
    # measured KL of the checkpoint, by hand: KL(p_dense || q) with log_softmax in float64
    t = 0.7
    zd = _dense_step_logits(load_model(str(tiny_dir)).model, ds)
    zq = _dense_step_logits(model, ds)
    lp, lq = torch.log_softmax(zd / t, -1), torch.log_softmax(zq / t, -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert rows[-1]["measured_kl"] == pytest.approx(kl, rel=1e-4)
    # the reversible cumulative replay of all units equals the applied checkpoint
    assert rows[-2]["measured_kl"] == pytest.approx(rows[-1]["measured_kl"], rel=1e-4, abs=1e-9)
    assert plan.measured_kl_total == rows[-1]["measured_kl"]
    assert plan.units[-1].cumulative_measured_kl == pytest.approx(rows[-2]["measured_kl"])


def test_iterative_plan_first_pick_is_the_single_unit_argmin(loaded):
    from prunelens.compression.methods import parse_method
    from prunelens.units import Unit

    ds = _store(loaded, seed=4)
    steps = ds.sizes["step"]
    plan = iterative_plan(ds, method="drop", kind="mlp", temperature=1.0, budget=2, loaded=loaded)
    assert plan.iterative and len(plan.units) == 2 and len(set(plan.unit_names)) == 2
    # by hand: the dense greedy continuation of each store prompt, teacher-forced, Var_p(dz)/2 at T=1
    prompts = torch.as_tensor(ds["tokens"].values[:, : int(ds["prompt_len"].values[0])])
    plen = prompts.shape[1]
    with torch.no_grad():
        gen = loaded.model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=steps,
                                    do_sample=False, pad_token_id=0)
        seq = gen[:, : plen + steps - 1]
        zd = loaded.model(input_ids=seq).logits.double()[:, plen - 1 :]
    preds = {}
    for i in range(4):
        with parse_method("drop").perturb(loaded.adapter, Unit(i, "mlp")), torch.no_grad():
            dz = loaded.model(input_ids=seq).logits.double()[:, plen - 1 :] - zd
        p = torch.softmax(zd, -1)
        mu = (p * dz).sum(-1, keepdim=True)
        preds[f"L{i}.mlp"] = float(((p * (dz - mu) ** 2).sum(-1) / 2).mean())
    first = min(preds, key=preds.get)
    assert plan.unit_names[0] == first
    assert plan.units[0].predicted_kl == pytest.approx(preds[first], rel=1e-3)

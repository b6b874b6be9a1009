"""The search allocator: budget-neutral mutations, determinism, never worse than its knapsack seed, and a planted
interaction the knapsack cannot see."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rank_helpers import random_ids, save_tiny, synthetic_store

import prunelens.plan.search_allocation as sa
import prunelens.text.corpora
from prunelens.compression.methods import parse_method
from prunelens.errors import PrunelensError
from prunelens.model.loading import load_model
from prunelens.plan.allocation import allocate_plan
from prunelens.units import Unit

FAST = dict(generations=4, offspring=4, survivors="2", tokens="24", windows=3, window_len=16, progress=False,
            calib_samples=4, calib_len=16)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("search") / "llama4", layers=4)


@pytest.fixture
def loaded(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.fixture(autouse=True)
def random_windows(monkeypatch):
    """The tiny word-level tokenizer cannot read Shakespeare: windows of random ids, one stream per split."""
    def windows(tok, n, length, split="calib", seed=0):
        asked.append(split)
        offset = {"calib": 0, "search": 1000, "probe": 2000, "heldout": 3000}[split]
        return random_ids(n, length, seed=offset + seed).numpy()

    asked: list[str] = []
    monkeypatch.setattr(prunelens.text.corpora, "token_windows", windows)
    return asked


def _store(loaded, methods, kinds=("block", "attn", "mlp"), seed=0):
    return synthetic_store(num_layers=4, kinds=kinds, methods=methods, seed=seed,
                           attrs={"model_id": loaded.model_id, "config_hash": loaded.config_hash, "prompts_hash": "p0",
                                  "complete": True})


# -- mutations keep the budget exactly -------------------------------------------------------------------
def test_mutations_never_change_the_total_saving():
    rng = np.random.default_rng(0)
    sizes = [884736, 2654208, 3538944]  # attention, MLP, block of SmolLM2
    levels = [0.3, 0.5, 0.6, 0.7, 0.9]
    savings = []
    for _ in range(12):  # a layer: dense, its block at a level, or attention/MLP at levels
        opts = [Fraction(0)] + [sa.exact(lv * sizes[2]) for lv in levels]
        opts += [sa.exact(a * sizes[0] + m * sizes[1]) for a in [0.0, *levels] for m in [0.0, *levels] if a or m]
        savings.append(opts)
    genome = [int(rng.integers(len(s))) for s in savings]
    spend = sum(savings[i][k] for i, k in enumerate(genome))
    moved = 0
    for _ in range(400):
        child = sa.mutate(genome, savings, rng, flips=int(rng.integers(1, 4)))
        if child is None:
            continue
        assert sum(savings[i][k] for i, k in enumerate(child)) == spend  # exact (fractions), not approximately
        assert child != genome
        genome, moved = child, moved + 1
    assert moved > 300


def test_bad_search_settings_are_one_line_errors(loaded):
    ds = _store(loaded, ["wanda:sparsity=0.5", "wanda:sparsity=0.7"], kinds=("block",))
    with pytest.raises(PrunelensError, match="same number of selection stages"):
        allocate_plan(ds, allocator="search", budget="sparsity=0.6", temperature=0.7, loaded=loaded,
                      **{**FAST, "survivors": "2/1"})
    with pytest.raises(PrunelensError, match="whole numbers joined by /"):
        allocate_plan(ds, allocator="search", budget="sparsity=0.6", temperature=0.7, loaded=loaded,
                      **{**FAST, "tokens": "many"})


# -- the search on a tiny model ------------------------------------------------------------------------------
@pytest.mark.parametrize("budget, methods, kinds", [
    ("sparsity=0.6", ["wanda:sparsity=0.5", "wanda:sparsity=0.6", "wanda:sparsity=0.7"], ("block", "attn", "mlp")),
    ("bits=3.5", ["rtn:bits=2", "rtn:bits=3", "rtn:bits=4", "rtn:bits=8"], ("block",)),
    ("units=2", ["drop"], ("block",)),
    ("bytes", ["drop", "wanda:sparsity=0.5"], ("block",)),  # two blocks' bytes below the dense checkpoint
])
def test_every_candidate_spends_exactly_the_seed_budget(loaded, monkeypatch, budget, methods, kinds):
    if budget == "bytes":
        from prunelens.plan.budgets import unit_sizes

        sizes = unit_sizes(loaded)
        budget = f"bytes={sizes.model_bytes - 2 * sizes.params['L1'] * sizes.bytes_per_param}"
    ds = _store(loaded, methods, kinds=kinds)
    seen: list[Fraction] = []
    real_install = sa.Assembler.install

    def install(self, genome):
        seen.append(sum((sa.combo_saving(self.combos[i][k]) for i, k in enumerate(genome)), Fraction(0)))
        return real_install(self, genome)

    monkeypatch.setattr(sa.Assembler, "install", install)
    plan = allocate_plan(ds, allocator="search", budget=budget, temperature=0.7, loaded=loaded, **FAST)
    knap = allocate_plan(ds, allocator="knapsack", budget=budget, temperature=0.7, loaded=loaded)
    info = plan.allocation
    assert len(seen) > 10 and len(set(seen)) == 1  # every candidate scored: one exact total
    assert float(seen[0]) == pytest.approx(knap.allocation["saving"], rel=1e-12)
    assert info["achieved"] == pytest.approx(knap.allocation["achieved"], rel=1e-12, abs=1e-12)
    assert info["seed"]["units"] == [{"unit": u.unit, "method": u.method} for u in knap.units]
    assert len(info["fitness_trace"]) == FAST["generations"] + 1
    cost = info["search_cost"]
    assert cost["forward_passes"] > 0 and cost["tokens"] >= cost["forward_passes"] and cost["seconds"] >= 0


def test_deterministic_under_seed_and_never_worse_than_the_knapsack(loaded):
    ds = _store(loaded, ["wanda:sparsity=0.5", "wanda:sparsity=0.6", "wanda:sparsity=0.7", "wanda:sparsity=0.8"])
    runs = [allocate_plan(ds, allocator="search", budget="sparsity=0.6", temperature=0.7, loaded=loaded,
                          **{**FAST, "generations": 6, "seed": s}) for s in (3, 3, 4)]
    a, b, c = (r.allocation for r in runs)
    assert [(u.unit, u.method) for u in runs[0].units] == [(u.unit, u.method) for u in runs[1].units]
    assert a["fitness_trace"] == b["fitness_trace"] and a["search_cost"]["tokens"] == b["search_cost"]["tokens"]
    for info in (a, c):
        trace = info["fitness_trace"]
        assert trace[0] == info["seed"]["fitness"] and trace[-1] == info["fitness"]
        assert all(y <= x for x, y in zip(trace, trace[1:]))  # elitist: never worse than the seed


def _independent_kl(loaded, units, windows, calib):
    """KL(dense || model with each unit perturbed on dense statistics), one plain forward, no search code."""
    from contextlib import ExitStack

    from prunelens.compression.calibration import collect_stats

    with torch.no_grad():
        p = F.log_softmax(loaded.model(input_ids=windows).logits.float(), -1)
        stats = collect_stats(loaded, [Unit(i, "block") for i in range(4)], "input_norms", calib)
        with ExitStack() as stack:
            for u in units:
                stack.enter_context(parse_method(u.method).perturb(loaded.adapter, Unit.parse(u.unit), stats))
            q = F.log_softmax(loaded.model(input_ids=windows).logits.float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_recorded_fitness_equals_an_independent_kl(loaded):
    ds = _store(loaded, ["wanda:sparsity=0.5", "wanda:sparsity=0.7"])
    plan = allocate_plan(ds, allocator="search", budget="sparsity=0.6", temperature=0.7, loaded=loaded, **FAST)
    windows = torch.as_tensor(prunelens.text.corpora.token_windows(None, 3, 16, split="search", seed=0))
    calib = torch.as_tensor(prunelens.text.corpora.token_windows(None, 4, 16, split="calib", seed=0))
    assert plan.allocation["fitness"] == pytest.approx(_independent_kl(loaded, plan.units, windows, calib), rel=1e-4)
    assert all((m.weight.data is not None) for m in loaded.adapter.linears(Unit(0, "block")).values())
    dense_again = _independent_kl(loaded, [], windows, calib)
    assert dense_again == pytest.approx(0.0, abs=1e-7)  # the search put every dense weight back


def test_variant_cache_directory_gives_the_same_search(loaded, tmp_path):
    ds = _store(loaded, ["wanda:sparsity=0.5", "wanda:sparsity=0.7"], kinds=("block",))
    mem = allocate_plan(ds, allocator="search", budget="sparsity=0.6", temperature=0.7, loaded=loaded, **FAST)
    disk = allocate_plan(ds, allocator="search", budget="sparsity=0.6", temperature=0.7, loaded=loaded,
                         **{**FAST, "cache": str(tmp_path / "variants")})
    assert disk.allocation["fitness_trace"] == pytest.approx(mem.allocation["fitness_trace"], rel=1e-12)
    files = list((tmp_path / "variants").rglob("*.safetensors"))
    assert files and len(files) == disk.allocation["search_cost"]["variants_built"]


# -- a planted interaction ----------------------------------------------------------------------------------
class _Option:
    def __init__(self, unit, level, cost):
        self.unit, self.method, self.saving, self.predicted_kl = unit, f"x:sparsity={level}", level * 10, cost


class _Planted:
    """Fitness = Σ single-layer costs + a penalty when layers 0 and 1 are both at the top level (the interaction)."""

    def __init__(self, combos, penalty=10.0):
        self.combos, self.penalty, self.genome = combos, penalty, None
        self.windows = [0, 1, 2, 3]
        self.forward_passes = self.tokens = 0

    def install(self, genome):
        self.genome = list(genome)

    def restore(self):
        self.genome = None

    def __call__(self, order, tokens):
        self.forward_passes += 1
        self.tokens += tokens or 64
        picked = [self.combos[i][k][0] for i, k in enumerate(self.genome)]
        both_top = picked[0].saving == 7 and picked[1].saving == 7
        return sum(o.predicted_kl for o in picked) + (self.penalty if both_top else 0.0)


def test_search_beats_the_knapsack_on_a_planted_interaction():
    from prunelens.plan.allocation import solve_mckp

    weights = [0.1, 0.1, 1.0, 1.0, 3.0, 3.0]  # layers 0 and 1 look cheapest to compress hard, one by one
    combos = [[(_Option(f"L{i}", lv, w * lv * lv),) for lv in (0.5, 0.6, 0.7)] for i, w in enumerate(weights)]
    groups = [[(o[0].saving, o[0].predicted_kl) for o in cs] for cs in combos]
    picks, _ = solve_mckp(groups, required=36.0)  # mean level 0.6
    assert picks[0] == picks[1] == 2  # the additive optimum puts both at 0.7: the interaction's trap
    fake = _Planted(combos)
    seed_fit = fake.__class__(combos)
    seed_fit.install(picks)
    before = seed_fit([0], None)
    res = sa.search(combos, picks, fake, fake, sa.SearchSettings(generations=15, offspring=6, survivors=(3,),
                                                                 tokens=(32,), seed=0, progress=False))
    assert res.seed_fitness == pytest.approx(before)
    assert res.fitness < before - 9.0  # escaped the penalty, at a small additive price
    assert sum(combos[i][k][0].saving for i, k in enumerate(res.genome)) == pytest.approx(36.0)
    assert not (res.genome[0] == 2 and res.genome[1] == 2)


def test_plan_cli_search_with_seed(loaded, tmp_path, random_windows):
    import json

    from click.testing import CliRunner

    from prunelens.cli import main

    store = tmp_path / "s.zarr"
    ds = _store(loaded, ["wanda:sparsity=0.5", "wanda:sparsity=0.7"], kinds=("block",))
    for name in [n for n in ds.data_vars if {"method", "unit"} <= set(ds[n].dims)]:
        ds[name] = ds[name].chunk({"method": 1, "unit": 1})
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    spec = "search:" + ",".join(f"{k}={v}" for k, v in FAST.items())
    outs = []
    for n in range(2):
        out = tmp_path / f"p{n}.json"
        res = CliRunner().invoke(main, ["plan", str(store), "--allocator", spec, "--budget", "sparsity=0.6", "-T", "0.7",
                                        "--seed", "5", "--out", str(out)])
        assert res.exit_code == 0, res.output
        written = json.loads(out.read_text())
        assert written["data"]["search_fitness"]["split"] == "search"
        assert written["data"]["search_calibration"]["split"] == "calib"
        outs.append(written["allocation"])
    assert set(random_windows) == {"calib", "search"}  # fitness and calibration windows, each from its own split
    assert outs[0]["params"]["seed"] == 5 and outs[0]["fitness_trace"] == outs[1]["fitness_trace"]
    res = CliRunner().invoke(main, ["plan", str(store), "--allocator", "knapsack", "--budget", "sparsity=0.6", "-T",
                                    "0.7", "--seed", "5", "--out", str(tmp_path / "k.json")])
    assert res.exit_code != 0 and "has no seed" in res.output


# -- validate: the interaction ratio ------------------------------------------------------------------------
@pytest.mark.parametrize("measured, remedy", [(0.7, True), (0.59, False), (0.3, False)])
def test_validate_prints_the_interaction_ratio_and_names_the_search(loaded, tmp_path, monkeypatch, measured, remedy):
    import json

    from click.testing import CliRunner

    import prunelens.plan.apply
    from prunelens.cli import main

    store = tmp_path / "s.zarr"
    ds = _store(loaded, ["wanda:sparsity=0.5", "wanda:sparsity=0.7"], kinds=("block",))
    for name in [n for n in ds.data_vars if {"method", "unit"} <= set(ds[n].dims)]:
        ds[name] = ds[name].chunk({"method": 1, "unit": 1})
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    plan_path = tmp_path / "plan.json"
    allocate_plan(ds, allocator="knapsack", budget="sparsity=0.6", temperature=0.7, loaded=loaded,
                  store_path=str(store)).save(plan_path)
    rows = [{"k": 1, "unit": "L0", "predicted_kl": 0.2, "cumulative_predicted_kl": 0.2, "measured_kl": 0.25,
             "taylor_kl_of_set": None, "top1_agree": 1.0},
            {"k": 2, "unit": "L1", "predicted_kl": 0.3, "cumulative_predicted_kl": 0.5, "measured_kl": measured,
             "taylor_kl_of_set": None, "top1_agree": 1.0}]
    monkeypatch.setattr(prunelens.plan.apply, "validate_plan", lambda *a, **k: rows)
    res = CliRunner().invoke(main, ["validate", str(plan_path)], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert f"interaction ratio (measured / sum of predicted KL): {measured / 0.5:.2f}" in res.output
    assert ("--allocator search" in res.output) == remedy
    res = CliRunner().invoke(main, ["validate", str(plan_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["interaction_ratio"] == pytest.approx(measured / 0.5)

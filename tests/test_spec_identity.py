"""One spec grammar and one canonical identity for methods, rankers and tasks."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from rank_helpers import save_tiny, synthetic_store

from prunelens.cli import main
from prunelens.compression.methods import canonical_spec, match_spec
from prunelens.errors import PrunelensError
from prunelens.params import parse_spec

LATE_FIRST = textwrap.dedent('''
    from prunelens.hookspecs import hookimpl
    from prunelens.params import Param
    from prunelens.plan.ranking import Ranker

    class LateFirst(Ranker):
        """Test ranker: later layers are safer; attention gets a bonus."""
        name = "late_first"
        params = {"attn_bonus": Param(float, 0.0, "subtracted from attention units' scores")}

        def score(self, ctx):
            return {u.name: -u.layer - (self.attn_bonus if u.kind == "attn" else 0.0) for u in ctx.units}

    @hookimpl
    def register_rankers(register):
        register(LateFirst)
''')


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    model_dir = save_tiny(root / "llama4", layers=4)
    from prunelens.model.loading import load_model

    loaded = load_model(str(model_dir))
    ds = synthetic_store(num_layers=4, seed=3, methods=("wanda", "rtn:bits=8"),
                         attrs={"model_id": str(model_dir), "config_hash": loaded.config_hash, "readout": "norm",
                                "complete": True})
    path = root / "probe.zarr"
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    plugin = root / "late_first.py"
    plugin.write_text(LATE_FIRST)
    return root, path, ds, plugin


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _ranked_units(output: str, units: list[str]) -> list[str]:
    return sorted(units, key=lambda u: output.index(f" {u} "))


def _expected_order(ds, label: str, kind: str) -> list[str]:
    cell = ds["kl_pred"].sel({"method": label, "locality": "propagated", "timing": "teacher_forced",
                              "temperature": 1.0})
    names = [u for u in (str(v) for v in ds["unit"].values) if (kind == "block") == ("." not in u) and
             (kind == "block" or u.endswith(kind))]
    means = {u: float(np.asarray(cell.sel(unit=u).values).mean()) for u in names}
    return sorted(names, key=means.get)


# -- the grammar ------------------------------------------------------------------------------
def test_parse_spec_grammar():
    assert parse_spec("wanda") == ("wanda", {})
    assert parse_spec(" wanda:sparsity=0.5, pattern=2:4 ") == ("wanda", {"sparsity": "0.5", "pattern": "2:4"})
    for bad, msg in (("lowrank:rank=", "empty value"), ("wanda:sparsity", "expected key=value"),
                     ("wanda:sparsity=0.5,sparsity=0.6", "given twice"), (":x=1", "empty method name"),
                     ("wanda:=3", "expected key=value")):
        with pytest.raises(PrunelensError, match=msg):
            parse_spec(bad)


def test_canonical_spec_drops_defaults_and_coerces_values():
    assert canonical_spec("wanda:sparsity=0.5") == canonical_spec("wanda") == canonical_spec("wanda:sparsity=0.50")
    assert canonical_spec("rtn:bits=8,sym=false") == canonical_spec("rtn:bits=8") == "rtn:bits=8"
    assert canonical_spec("rtn") != canonical_spec("rtn:bits=8")
    assert canonical_spec("rtn:sym=true,bits=8") == canonical_spec("rtn:bits=8,sym=yes")
    with pytest.raises(PrunelensError, match="empty value"):
        canonical_spec("rtn:bits=")
    with pytest.raises(PrunelensError, match="has no parameter"):
        canonical_spec("wanda:sparsty=0.5")


def test_match_spec_never_matches_different_effective_parameters():
    labels = ["wanda", "rtn:bits=8"]
    assert match_spec("wanda:sparsity=0.5", labels) == "wanda"
    assert match_spec("rtn:bits=8,sym=false", labels) == "rtn:bits=8"
    assert match_spec("rtn", labels) is None  # plain rtn means 4 bits
    assert match_spec("wanda:sparsity=0.7", labels) is None
    assert match_spec("rtn:bits=8,sym=true", labels) is None
    assert match_spec("wanda", ["wanda:sparsity=0.5"]) == "wanda:sparsity=0.5"  # a non-canonical stored label
    # a method whose plugin is not installed matches its own labels, parameters in any order
    assert match_spec("nosuch:b=2,a=1", ["nosuch:a=1,b=2"]) == "nosuch:a=1,b=2"


# -- every command matches the same way -------------------------------------------------------
def test_rank_plan_match_a_spec_with_defaults_spelt_out(store):
    root, path, ds, _ = store
    want = _expected_order(ds, "wanda", "mlp")
    for spelt in ("wanda", "wanda:sparsity=0.5", "wanda:sparsity=0.50"):
        res = _run("rank", path, "--method", spelt, "--kind", "mlp")
        assert res.exit_code == 0, res.output
        assert _ranked_units(res.output, want) == want
    res = _run("rank", path, "--method", "rtn:bits=8,sym=false", "--kind", "mlp")
    assert res.exit_code == 0, res.output
    assert _ranked_units(res.output, want) == _expected_order(ds, "rtn:bits=8", "mlp")
    out = root / "plan.json"
    res = _run("plan", path, "--method", "wanda:sparsity=0.5", "--kind", "block", "--budget", "2", "--out", out)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["method"] == "wanda"


@pytest.mark.parametrize("spec", ["rtn", "rtn:bits=8,sym=true", "wanda:sparsity=0.7"])
def test_rank_refuses_specs_with_other_effective_parameters(store, spec):
    _, path, _, _ = store
    res = _run("rank", path, "--method", spec)
    assert res.exit_code == 1
    assert f"method {spec!r} is not in the store; it has wanda, rtn:bits=8" in res.output
    assert "Traceback" not in res.output


def test_tui_backend_and_report_resolve_through_the_same_function(store):
    from prunelens.plan.ranking import resolve_method

    _, _, ds, _ = store
    import prunelens_tui.backend as backend

    df = backend.rank_units(ds, method="wanda:sparsity=0.5", kind="attn", temperature=1.0, by="kl_pred")
    assert df.attrs["method"] == "wanda"
    assert resolve_method(ds, "rtn:sym=false,bits=8") == "rtn:bits=8"


def test_empty_parameter_value_is_refused_on_the_command_line(store):
    _, path, _, _ = store
    res = _run("rank", path, "--method", "wanda:sparsity=")
    assert res.exit_code == 1
    assert "'sparsity' has an empty value" in res.output and len(res.output.strip().splitlines()) == 1


# -- rankers, tasks, allocators: the same grammar ---------------------------------------------
def test_ranker_parameters_on_the_command_line(store):
    _, path, ds, plugin = store
    units = [str(u) for u in ds["unit"].values]
    layer = {u: int(u[1:].split(".")[0]) for u in units}
    for bonus in (0.0, 2.0):
        res = _run("--plugin", plugin, "rank", path, "--method", "wanda", "--by", f"late_first:attn_bonus={bonus:g}")
        assert res.exit_code == 0, res.output
        score = {u: -layer[u] - (bonus if u.endswith(".attn") else 0.0) for u in units}
        want = sorted(units, key=lambda u: (score[u], units.index(u)))
        assert _ranked_units(res.output, units) == want
    res = _run("--plugin", plugin, "rank", path, "--by", "late_first:attn_bonus=")
    assert res.exit_code == 1 and "empty value" in res.output
    res = _run("rank", path, "--method", "wanda", "--by", "kl_pred:nosuch=1")
    assert res.exit_code == 1 and "has no parameter nosuch" in res.output


def test_list_strategies_needs_no_store():
    res = _run("rank", "--list-strategies")
    assert res.exit_code == 0, res.output
    for name in ("kl_pred", "block_influence", "angular"):
        assert name in res.output
    assert "samples=8" in res.output  # parameters and defaults are listed
    res = _run("rank")
    assert res.exit_code == 2 and "STORE" in res.output


def test_task_specs_use_the_same_grammar():
    from prunelens.evaluation.task_runner import parse_task

    assert parse_task("perplexity:n_samples=3").n_samples == 3
    with pytest.raises(PrunelensError, match="empty value"):
        parse_task("perplexity:n_samples=")
    with pytest.raises(PrunelensError, match="given twice"):
        parse_task("perplexity:seed=1,seed=2")


def test_allocator_specs_and_method_choice_use_the_same_grammar_and_identity(store):
    from prunelens.plan.allocation import AllocContext, parse_allocator_spec

    assert parse_allocator_spec("owl:M=5,lmbda=0.1") == ("owl", {"M": "5", "lmbda": "0.1"})
    with pytest.raises(PrunelensError, match="empty value"):
        parse_allocator_spec("owl:M=")
    _, _, ds, _ = store
    assert AllocContext(ds, None, 1.0, methods=["wanda:sparsity=0.5"]).store_labels() == ["wanda"]
    assert AllocContext(ds, None, 1.0, methods=["rtn:sym=false,bits=8"]).store_labels() == ["rtn:bits=8"]
    assert AllocContext(ds, None, 1.0, methods=["rtn"]).store_labels() == ["rtn:bits=8"]  # a bare name: all its levels
    with pytest.raises(PrunelensError, match="not in the store"):
        AllocContext(ds, None, 1.0, methods=["rtn:bits=4"]).store_labels()


def test_one_reader_of_the_spec_grammar_serves_specs_sweeps_and_cli_assignments():
    from prunelens.compression.methods import expand_method_specs
    from prunelens.params import parse_assignments, parse_spec, spec_items

    assert spec_items("wanda:sparsity=0.3,0.5,pattern=2:4", sweep=True) == \
        ("wanda", [("sparsity", "0.3"), ("", "0.5"), ("pattern", "2:4")])
    assert parse_spec("sparsegpt:pattern=2:4,sparsity=0.5") == ("sparsegpt", {"pattern": "2:4", "sparsity": "0.5"})
    assert expand_method_specs("wanda:sparsity=0.3,0.5") == ["wanda:sparsity=0.3", "wanda:sparsity=0.5"]
    for bad, message in (("wanda:sparsity=0.3,0.5", "expected key=value"), ("wanda:sparsity=", "empty value"),
                         (":sparsity=0.5", "empty method name")):
        with pytest.raises(PrunelensError, match=message):
            parse_spec(bad)
    with pytest.raises(PrunelensError, match="empty value"):  # the sweep reader refuses it the same way
        expand_method_specs("wanda:sparsity=0.3,sparsity=")
    assert parse_assignments(["sparsity=0.5", " bits = 4 "], "--param") == {"sparsity": "0.5", "bits": "4"}
    for bad in ("sparsity", "=0.5", "sparsity="):
        with pytest.raises(PrunelensError, match=r"bad --param .*expected key=value"):
            parse_assignments([bad], "--param")

"""Safety under faults: no data destroyed, no code run from a store,
no NaN ranked as safe, no silent mix of weights, corruption never silent.

Fault injection against the store writer (delete / truncate / flip a chunk, a held lock, weights
changed between runs) asserts that every case is a one-line error, a recomputed cell or a
flagged NaN. The SIGKILL-at-three-moments and two-process race tests run the CLI (``slow``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from probe_helpers import single_thread
from rank_helpers import save_tiny, synthetic_store

from prunelens.cli import main
from prunelens.compression.methods import parse_method
from prunelens.errors import PrunelensError
from prunelens.model.loading import load_model, weights_fingerprint
from prunelens.probe.engine import ProbeSettings
from prunelens.probe.prompts import Prompts
from prunelens.probe.run import run_probe
from prunelens.units import select_units
from prunelens_store import open_store
from prunelens_store.writer import StoreLock

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
ESC = "\x1b"


NAN_PLUGIN = '''
from contextlib import contextmanager
from prunelens.hookspecs import hookimpl
from prunelens.compression.methods import Method


class NaNOnLayer1(Method):
    """Test-only: the output of every layer-1 unit becomes NaN; other units are scaled by 1.1."""

    name = "nan_l1"

    @contextmanager
    def perturb(self, adapter, unit, stats=None):
        factor = float("nan") if unit.layer == 1 else 1.1

        def hook(_m, _args, out):
            return (out[0] * factor,) + tuple(out[1:]) if isinstance(out, tuple) else out * factor

        handle = adapter.module(unit).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


@hookimpl
def register_methods(register):
    register(NaNOnLayer1)
'''


@pytest.fixture(scope="module")
def nan_method(tmp_path_factory):
    from prunelens.plugins import load_plugin_file

    path = tmp_path_factory.mktemp("nanplugin") / "nan_plugin.py"
    path.write_text(NAN_PLUGIN)
    load_plugin_file(path)
    return parse_method("nan_l1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny llama (4 layers, vocab 96) loaded once."""
    path = save_tiny(tmp_path_factory.mktemp("safety") / "llama4", layers=4)
    return path, load_model(str(path))


PROMPTS = Prompts([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
SETTINGS = ProbeSettings(steps=3, temperatures=(1.0,), batch_size=3)


def probe(loaded, out, methods=("drop",), units="L0-3", **kw):
    ms = [parse_method(m) if isinstance(m, str) else m for m in methods]
    return run_probe(loaded, ms, select_units(units, 4), PROMPTS, SETTINGS, out, progress=False, **kw)


def one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cli(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


# -- overwrite never destroys a directory that is not a checkpoint -------------------------
def test_apply_overwrite_refuses_the_working_directory_and_its_parent(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("my work")
    (work / "plan.json").write_text("{}")
    monkeypatch.chdir(work)
    for out in (".", str(work), str(tmp_path)):
        res = cli("apply", "plan.json", "--out", out, "--overwrite", "--force")
        one_line_error(res, "current directory", "refusing")
        assert (work / "notes.txt").read_text() == "my work"
    res = cli("compress", "--model", "none", "--method", "drop", "--units", "L0", "--out", ".", "--overwrite")
    one_line_error(res, "current directory")
    assert (work / "notes.txt").is_file()


def test_overwrite_refuses_home_and_foreign_directories(tmp_path, monkeypatch):
    from prunelens.paths import guard_output_dir

    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(PrunelensError, match="home directory"):
        guard_output_dir(home, overwrite=True, force=True)
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2")
    with pytest.raises(PrunelensError, match="not a prunelens checkpoint"):
        guard_output_dir(foreign, overwrite=True)  # --overwrite alone never deletes a foreign directory
    assert guard_output_dir(foreign, overwrite=False, force=True) == foreign.resolve()  # --force: explicit
    assert guard_output_dir(tmp_path / "new" / "ckpt", overwrite=False) == (tmp_path / "new" / "ckpt").resolve()
    with pytest.raises(PrunelensError, match="not a directory"):
        guard_output_dir(foreign / "data.csv", overwrite=True)


def test_checkpoint_overwrite_keeps_foreign_files_and_mode(tmp_path, tiny):
    from prunelens.compression.sequential import save_checkpoint

    _, loaded = tiny
    out = save_checkpoint(loaded, tmp_path / "ckpt", {"a": 1})
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
    info = json.loads((out / "prunelens.json").read_text())
    assert "prunelens.json" in info["files"] and "model.safetensors" in info["files"]
    save_checkpoint(loaded, out, {"a": 2}, overwrite=True)  # a pure checkpoint: replaced
    (out / "my_eval.json").write_text("{}")
    with pytest.raises(PrunelensError, match="also holds other files .*my_eval.json"):
        save_checkpoint(loaded, out, {"a": 3}, overwrite=True)
    assert (out / "my_eval.json").is_file() and json.loads((out / "prunelens.json").read_text())["a"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporaries left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_apply_out_onto_a_foreign_directory_needs_force(tmp_path):
    """apply --out onto a non-empty directory that is not a checkpoint is refused unless --force."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    (tmp_path / "plan.json").write_text("{}")
    res = cli("apply", tmp_path / "plan.json", "--out", out)
    one_line_error(res, "not a prunelens checkpoint", "--force")
    res = cli("apply", tmp_path / "plan.json", "--out", out, "--overwrite")
    one_line_error(res, "not a prunelens checkpoint")
    assert (out / "keep.txt").is_file()


# -- non-finite results propagate, are counted, never rank or plan as safe ----------------
def test_one_minus_cos_of_nan_or_inf_is_not_zero():
    from prunelens.probe.metrics import one_minus_cos, vector_metrics

    x = torch.randn(3, 8, dtype=torch.float64)
    dx = torch.zeros_like(x)
    dx[0, 0], dx[1, 0] = float("nan"), float("inf")
    cos, pred, rel = vector_metrics(x, dx)
    assert torch.isnan(cos[0]) and not torch.isfinite(cos[1]) and cos[2] == 0
    assert torch.isnan(one_minus_cos(torch.tensor([float("nan")]), torch.tensor([0.0]), torch.tensor([0.0])))[0]
    assert one_minus_cos(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]))[0] == 0  # two zero vectors


def test_nan_units_are_counted_flagged_and_never_planned(tmp_path, tiny, nan_method):
    from prunelens.plan.ranking import nonfinite_units, rank_units
    from prunelens.plan.unit_selection import plan_from_store

    path, loaded = tiny
    out = tmp_path / "nan.zarr"
    attrs = probe(loaded, out, methods=[nan_method], units="attn,mlp")
    assert attrs["nonfinite_cells"] == 2 and attrs["complete"]  # L1.attn and L1.mlp
    ds = open_store(out)
    for unit in ("L1.attn", "L1.mlp"):
        cos = ds["cos_dev"].sel({"method": "nan_l1", "unit": unit}).values
        assert np.isnan(cos).all()  # measured 1-cos of a NaN output is NaN, not 0.0
    df = rank_units(ds, method="nan_l1", kind=None, temperature=1.0)
    assert set(nonfinite_units(df)) == {"L1.attn", "L1.mlp"}
    assert set(df["unit"].iloc[-2:]) == {"L1.attn", "L1.mlp"} and df["rank"].iloc[-2:].isna().all()
    plan = plan_from_store(ds, method="nan_l1", kind=None, temperature=1.0, by="kl_pred", budget=6)
    assert set(plan.unit_names).isdisjoint({"L1.attn", "L1.mlp"}) and len(plan.unit_names) == 6
    res = cli("rank", out)
    assert res.exit_code == 0 and "non-finite" in res.output and "L1.attn" in res.output
    res = cli("report", out, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "non-finite cells in the store: **2**" in md and "L1.mlp" in md.split("Warning")[1]


def test_a_store_without_any_finite_score_does_not_crash_rank_or_report(tmp_path):
    ds = synthetic_store(num_layers=3, kinds=("block",), attrs={"model_id": "tiny", "config_hash": "abc", "complete": True,
                                                               "nonfinite_cells": 3, "nonfinite_values": 9})
    for var in ("kl", "kl_pred", "cos_dev", "cos_dev_pred", "rel_norm", "top1_agree"):
        ds[var].values[...] = np.nan
    ds["nonfinite"] = (("method", "unit"), np.full((1, 3), 3, dtype=np.int64))  # as the writer counts them
    store = tmp_path / "allnan.zarr"
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    res = cli("rank", store)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "3 cell(s) with non-finite values" in res.output
    res = cli("report", store, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    res = cli("plan", store, "--budget", "2", "--out", tmp_path / "plan.json")
    one_line_error(res, "no unit has a score")
    assert not (tmp_path / "plan.json").exists()


# -- a resume never mixes cells measured on different weights ----------------------------
def test_weights_changed_between_runs_are_refused(tmp_path, tiny):
    path, _ = tiny
    loaded = load_model(str(path))
    out = tmp_path / "w.zarr"
    probe(loaded, out, units="L0")
    stored = json.loads(zarr.open_group(str(out), mode="r").attrs["identity"])["weights"]
    assert stored == weights_fingerprint(loaded.model)
    with torch.no_grad():  # a change too small to move the greedy continuation
        loaded.model.model.layers[2].mlp.down_proj.weight[0, 0] += 1e-4
    with pytest.raises(PrunelensError, match="refusing to mix results.*weights"):
        probe(loaded, out, units="L0")


# -- no code run from a store; every string escaped -------------------------------------
def test_every_transformers_load_passes_trust_remote_code():
    """A source scan: every from_pretrained / from_config call in the package says trust_remote_code."""
    import ast

    root = Path(__file__).resolve().parents[1]
    missing = []
    for folder in ("src", "plugins", "store", "tui"):
        for py in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in ("from_pretrained", "from_config"):
                    # a **kwargs splat is accepted: models.load_model builds its kwargs with trust_remote_code
                    if not any(k.arg in ("trust_remote_code", None) for k in node.keywords):
                        missing.append(f"{py.relative_to(root)}:{node.lineno}")
    assert not missing, missing


def test_a_store_naming_a_model_with_custom_code_never_runs_it(tmp_path, monkeypatch):
    from prunelens.model.info import model_config

    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "cfg.EvilConfig"}}))
    (evil / "cfg.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                 "from transformers import PretrainedConfig\n"
                                 "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # a user who would answer the prompt with y
    with pytest.raises(PrunelensError, match="cannot read the config"):
        model_config(str(evil))
    assert not marker.exists()


def _hostile_store(tmp_path: Path) -> Path:
    label = f"drop[/]{ESC}[2J"
    ds = synthetic_store(num_layers=3, kinds=("block",), methods=(label,),
                         attrs={"model_id": f"runs/[exp1]/model{ESC}]0;pwned\x07", "config_hash": f"[bold]{ESC}[31m",
                                "readout": "norm[/]", "complete": True})
    store = tmp_path / "hostile.zarr"
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    return store


def test_store_strings_are_escaped_in_rank_plan_and_report(tmp_path):
    store = _hostile_store(tmp_path)
    res = cli("rank", store)
    assert res.exit_code == 0, res.output
    assert ESC not in res.output and "drop[/]" in res.output  # markup printed literally, escapes removed
    res = cli("plan", store, "--budget", "1", "--out", tmp_path / "p.json")
    assert ESC not in res.output and "MarkupError" not in res.output and "Traceback" not in res.output
    res = cli("report", store, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ESC not in md and "\x07" not in md and "runs/[exp1]/model" in md


def test_safe_text_removes_escapes_and_escapes_markup():
    from rich.console import Console

    from prunelens.safe_text import clean, esc

    assert clean(f"a{ESC}]0;title\x07b{ESC}[2Jc\x9b31md") == "abcd"
    assert clean("x\ny\tz\x00") == "x y z"
    console = Console(record=True, width=200, color_system=None)
    for text in ("[/]", "[/0] boom", "runs/[exp1]/model", "[bold]x[/bold]", "a\\[b]"):
        console.print(esc(text))
    assert console.export_text().splitlines() == ["[/]", "[/0] boom", "runs/[exp1]/model", "[bold]x[/bold]", "a\\[b]"]


async def test_tui_launches_on_a_hostile_store(tmp_path):
    """``[/]`` in a store crashed the TUI at launch."""
    from prunelens_tui.app import PrunelensApp

    store = _hostile_store(tmp_path)
    app = PrunelensApp([store], cwd=tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        for key in ("", "2", "3", "4", "5", "1"):
            if key:
                await pilot.press(key)
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
        assert app.ds is not None
        assert str(app.ds["method"].values[0]) == "drop[/]"  # escapes removed, markup kept as text
        assert ESC not in app.ds.attrs["model_id"]


def test_plugins_command_survives_markup_in_an_error(monkeypatch):
    from prunelens import plugins

    info = plugins.plugin_infos()[0]
    broken = type(info)(**{**info.__dict__, "name": "broken[/]", "error": "ImportError: [/0] bad"})
    monkeypatch.setattr(plugins, "plugin_infos", lambda *a, **k: [broken])
    res = cli("plugins")
    assert res.exit_code == 0, res.output
    assert "[/0] bad" in res.output and "broken[/]" in res.output


def test_a_plugin_file_named_like_a_builtin_is_loaded(tmp_path):
    plugin = tmp_path / "drop.py"
    plugin.write_text(
        "from contextlib import contextmanager\nfrom prunelens.hookspecs import hookimpl\n"
        "from prunelens.compression.methods import Method\n\n"
        "class Mine(Method):\n    name = 'mine_from_drop_py'\n\n"
        "    @contextmanager\n    def perturb(self, adapter, unit, stats=None):\n        yield\n\n"
        "@hookimpl\ndef register_methods(register):\n    register(Mine)\n")
    code = ("import sys\nfrom prunelens.cli import main\n"
            f"sys.argv = ['prunelens', '--plugin', {str(plugin)!r}, 'plugins', '--json']\nmain()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PRUNELENS_LOAD_PLUGINS=""))
    assert res.returncode == 0, res.stderr[-2000:]
    methods = {m for p in json.loads(res.stdout) for m in p["methods"]}
    assert "mine_from_drop_py" in methods and "drop" in methods


# -- corruption is an error naming the cell, and resume recomputes it ----------
@pytest.fixture(scope="module")
def good_store(tmp_path_factory, tiny):
    _, loaded = tiny
    out = tmp_path_factory.mktemp("good") / "good.zarr"
    probe(loaded, out, methods=("drop", "magnitude:sparsity=0.5"), units="L0-3")
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _chunk(store: Path, var: str, m: int, u: int) -> Path:
    return next(p for p in (store / var / "c" / str(m) / str(u)).rglob("*") if p.is_file())


def _damage(store: Path, how: str) -> None:
    if how == "delete":
        _chunk(store, "kl", 1, 2).unlink()
    elif how == "truncate":
        f = _chunk(store, "kl", 1, 2)
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    elif how == "flip":
        f = _chunk(store, "kl", 1, 2)
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        b[len(b) // 2 + 1] ^= 0x10
        f.write_bytes(bytes(b))


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_a_damaged_chunk_is_an_error_for_readers_and_recomputed_on_resume(tmp_path, tiny, good_store, how):
    _, loaded = tiny
    store = _copy(good_store, tmp_path / "bad.zarr")
    _damage(store, how)
    with pytest.raises(PrunelensError, match=r"damaged: kl chunk .* at \(method=magnitude[^,]*, unit=L2\)"):
        open_store(store)
    for args in (["rank", store, "--method", "drop"], ["plan", store, "--method", "drop", "--budget", "1", "--out",
                                                       tmp_path / "p.json"],
                 ["report", store, "--method", "drop", "--out", tmp_path / "rep"]):
        one_line_error(cli(*args), "damaged", "unit=L2")
    from prunelens_tui.discover import summarize

    assert "damaged" in summarize(store).error  # the TUI's Runs screen shows it as an error row
    probe(loaded, store, methods=("drop", "magnitude:sparsity=0.5"), units="L0-3")  # resume: recomputes the cell
    a, b = zarr.open_group(str(good_store), mode="r"), zarr.open_group(str(store), mode="r")
    for name, _ in a.arrays():
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    open_store(store)


@pytest.mark.parametrize("target", ["zarr.json", "kl/zarr.json", "done/zarr.json"])
def test_truncated_metadata_is_a_one_line_error(tmp_path, good_store, target):
    store = _copy(good_store, tmp_path / "meta.zarr")
    f = store / target
    f.write_text(f.read_text()[:40])
    res = cli("rank", store, "--method", "drop")
    if res.exit_code == 0:  # consolidated metadata made the damaged copy unnecessary: the numbers are intact
        ref = cli("rank", good_store, "--method", "drop")
        assert res.output == ref.output
    else:
        one_line_error(res)


# -- one line before the work, never a half-written store ----------------------
def test_a_held_lock_refuses_a_second_probe(tmp_path, tiny):
    _, loaded = tiny
    out = tmp_path / "locked.zarr"
    with StoreLock(out):
        with pytest.raises(PrunelensError, match="another prunelens probe is writing"):
            probe(loaded, out, units="L0")
        assert not out.exists()
    probe(loaded, out, units="L0")  # released: the run goes ahead
    assert open_store(out).attrs["complete"]


def test_stale_temporaries_are_removed_and_never_listed(tmp_path, tiny):
    from prunelens_tui.discover import find_stores

    _, loaded = tiny
    out = tmp_path / "run.zarr"
    dead = tmp_path / ".run.zarr.tmp-999999999-abcd" / "store.zarr"
    legacy = tmp_path / ".run.zarr.tmp-k3j4h5"
    other = tmp_path / ".other.zarr.tmp-1-xyz"
    for d in (dead, legacy, other):
        d.mkdir(parents=True)
        (d / "zarr.json").write_text("{}")
    assert find_stores([tmp_path]) == []  # hidden temporaries are not stores to list
    probe(loaded, out, units="L0")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".other.zarr.tmp-1-xyz", ".run.zarr.lock", "run.zarr"]


@pytest.mark.parametrize("row,message", [
    ({"ids": [5, 6, 100000]}, "outside the model's vocabulary"),
    ({"ids": [5, -1, 6]}, "-1 is not a token id"),
    ({"ids": ["five", 6]}, "'five' is not a token id"),
    ({"ids": "5 6 7"}, "must be a list of token ids"),
    ({"ids": [5, 6], "candidates": [-3]}, "-3 is not a token id"),
    ({"prompt": 5}, "'prompt' must be a string"),
])
def test_bad_prompt_ids_are_one_line_and_leave_no_store(tmp_path, tiny, row, message):
    path, _ = tiny
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(row) + "\n")
    out = tmp_path / "x.zarr"
    res = cli("probe", "--model", path, "--method", "drop", "--units", "L0", "--prompts", prompts, "--steps", "2",
              "--out", out, "--quiet", "--device", "cpu")
    one_line_error(res, message)
    assert not out.exists()


def test_invalid_utf8_prompts_file(tmp_path, tiny):
    path, _ = tiny
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"good line\n\xff\xfe bad\n")
    res = cli("probe", "--model", path, "--method", "drop", "--units", "L0", "--prompts", prompts, "--steps", "2",
              "--out", tmp_path / "x.zarr", "--quiet", "--device", "cpu")
    one_line_error(res, "not UTF-8")


@pytest.mark.parametrize("temps", ["inf", "nan", "1,inf", "-1"])
def test_non_finite_temperatures_are_refused(tmp_path, temps):
    res = cli("probe", "--model", "none", "--method", "drop", "--temperature", temps, "--out", tmp_path / "x.zarr")
    one_line_error(res, "temperatures must be positive finite numbers")


def test_unwritable_outputs_fail_before_the_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    store = tmp_path / "s.zarr"
    synthetic_store(num_layers=2).to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    one_line_error(cli("rank", store, "--csv", blocker / "r.csv"), "--csv", "not a directory")
    one_line_error(cli("plan", store, "--budget", "1", "--out", blocker / "p.json"), "--out")
    one_line_error(cli("report", store, "--out", blocker / "rep"), "--out")
    # eval: the check comes before the model is even loaded (a model that does not exist is never reached)
    one_line_error(cli("eval", "no-such-model-dir/", "--json", blocker / "e.json"), "--json")
    one_line_error(cli("probe", "--model", "none", "--method", "drop", "--out", blocker / "x.zarr"), "--out")


@pytest.mark.parametrize("top", ["0", "-3"])
def test_rank_top_must_be_positive(tmp_path, top):
    store = tmp_path / "s.zarr"
    synthetic_store(num_layers=2).to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    res = cli("rank", store, "--top", top)
    assert res.exit_code == 2 and "--top" in res.output


def test_plans_that_select_nothing_or_remove_every_layer_are_refused(tmp_path, tiny):
    path, loaded = tiny
    ds = synthetic_store(num_layers=4, kinds=("block", "attn", "mlp"),
                         attrs={"model_id": str(path), "config_hash": loaded.config_hash, "complete": True})
    store = tmp_path / "s.zarr"
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    one_line_error(cli("plan", store, "--kind", "block", "--budget", "4", "--out", tmp_path / "p.json"),
                   "every one of the model's 4 layers")
    one_line_error(cli("plan", store, "--kind", "mlp", "--budget", "0.000001", "--out", tmp_path / "p.json"),
                   "selects no unit")
    assert not (tmp_path / "p.json").exists()
    res = cli("plan", store, "--kind", "block", "--budget", "3", "--out", tmp_path / "p.json")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("units,message", [(["L1", "L1"], "twice"), (["L2", "L2.attn"], "overlap"),
                                           (["L3.mlp", "L3"], "overlap")])
def test_apply_refuses_duplicate_or_overlapping_units(tmp_path, tiny, units, message):
    path, loaded = tiny
    ds = synthetic_store(num_layers=4, attrs={"model_id": str(path), "config_hash": loaded.config_hash, "complete": True})
    store = tmp_path / "s.zarr"
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    assert cli("plan", store, "--kind", "block", "--budget", "2", "--out", tmp_path / "p.json").exit_code == 0
    plan = json.loads((tmp_path / "p.json").read_text())
    template = plan["units"][0]
    plan["units"] = [{**template, "unit": u} for u in units]
    (tmp_path / "p.json").write_text(json.dumps(plan))
    one_line_error(cli("apply", tmp_path / "p.json", "--out", tmp_path / "ckpt"), message)
    assert not (tmp_path / "ckpt").exists()


# -- SIGKILL at three moments, and two processes at the same instant (CLI, slow) ---------------------
KILL_PLUGIN = '''
"""Test-only: SIGKILL this process at a chosen moment of a probe ($KILL_AT)."""
import os, signal

AT = os.environ.get("KILL_AT", "")

def _die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)

if AT == "create":  # the store's metadata written into the temporary directory, not yet renamed into place
    import xarray
    _to_zarr = xarray.Dataset.to_zarr
    def to_zarr(self, *a, **k):
        out = _to_zarr(self, *a, **k)
        _die()
    xarray.Dataset.to_zarr = to_zarr
elif AT == "cells":  # after the third cell is written
    import prunelens_store.writer as w
    _write = w.StoreWriter.write_cell
    count = [0]
    def write_cell(self, *a, **k):
        _write(self, *a, **k)
        count[0] += 1
        if count[0] == 3:
            _die()
    w.StoreWriter.write_cell = write_cell
elif AT == "finalise":  # summaries and complete=True written, metadata not yet consolidated
    import zarr
    zarr.consolidate_metadata = _die
'''


def _probe_cmd(model: Path, out: Path, plugin: Path) -> list[str]:
    return [sys.executable, "-m", "prunelens", "--plugin", str(plugin), "probe", "--model", str(model), "--method",
            "drop", "--method", "magnitude:sparsity=0.5", "--units", "all", "--samples", "3", "--prompt-len", "6",
            "--steps", "3", "--temperature", "0.7,1", "--batch-size", "3", "--out", str(out), "--quiet",
            "--device", "cpu", "--prompts", str(model.parent / "prompts.txt")]


def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PRUNELENS_LOAD_PLUGINS="", HF_HUB_OFFLINE="1",
                PRUNELENS_NO_PROGRESS="1", **extra)


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, tiny):
    path, _ = tiny
    (path.parent / "prompts.txt").write_text("w5 w6 w7 w8 w9\nw10 w11 w12\nw13 w14 w15 w16 w17 w18\n")
    plugin = path.parent / "kill_plugin.py"
    plugin.write_text(KILL_PLUGIN)
    ref = tmp_path_factory.mktemp("ref") / "ref.zarr"
    subprocess.run(_probe_cmd(path, ref, plugin), env=_env(), check=True, timeout=300)
    return path, plugin, ref


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["create", "cells", "finalise"])
def test_sigkill_at_three_moments_then_rerun_equals_uninterrupted(tmp_path, cli_setup, moment):
    from test_probe_run import assert_same_store

    model, plugin, ref = cli_setup
    out = tmp_path / "run.zarr"
    res = subprocess.run(_probe_cmd(model, out, plugin), env=_env(KILL_AT=moment), timeout=300)
    assert res.returncode == -signal.SIGKILL
    if moment == "create":
        assert not out.exists() and any(p.name.startswith(".run.zarr.tmp-") for p in tmp_path.iterdir())
    else:
        assert out.exists() and not json.loads((out / "zarr.json").read_text()).get("consolidated_metadata")
    subprocess.run(_probe_cmd(model, out, plugin), env=_env(), check=True, timeout=300)
    assert_same_store(ref, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.zarr.lock", "run.zarr"]  # temporaries cleaned


@pytest.mark.slow
def test_two_probes_started_at_the_same_instant(tmp_path, cli_setup):
    from test_probe_run import assert_same_store

    model, plugin, ref = cli_setup
    out = tmp_path / "race.zarr"
    procs = [subprocess.Popen(_probe_cmd(model, out, plugin), env=_env(), stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 1]), results  # one waits its turn (finished first) or is refused; never a traceback
    for rc, err in results:
        assert "Traceback" not in err
        if rc == 1:
            assert "another prunelens probe is writing" in err
    assert_same_store(ref, out)


# -- exports: every plan string in a YAML or Markdown export is quoted or serialised ------------------
HOSTILE = ["m\nx: !!python/object/apply:os.system ['touch PWNED']\n#", "{a: 1} # 'q' \"dq\" \\n \\x1b",
           "!!binary AAAA\r\n- item", f"t{ESC}[31m\u2028key: !tag v\x85y: z"]


def _tagless_yaml(text: str, keys: set[str]) -> Any:
    """``text`` parses with ``safe_load`` into a mapping of exactly ``keys``, with no tag token anywhere: a
    header of comment lines, then the library's body."""
    import yaml

    assert not [t for t in yaml.scan(text) if isinstance(t, yaml.TagToken)]
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and set(data) == keys
    lines = text.splitlines()
    body = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    assert lines[body].split(":")[0] in keys  # the header is comments only; the body is the library's
    assert not [ln for ln in lines[body:] if ln.startswith("#")]
    return data


def _hostile_model_dir(root: Path, target: Path, name: str) -> Path:
    """A symlink to ``target`` whose path ends in ``name`` (``/`` in it becomes nested folders)."""
    *parents, leaf = name.split("/")
    folder = root.joinpath(*parents) if parents else root
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / leaf
    link.symlink_to(target, target_is_directory=True)
    return link


@pytest.mark.parametrize("hostile", HOSTILE)
def test_llmcompressor_recipe_quotes_model_path_strategy_method_and_budget(tmp_path, tiny, hostile):
    from prunelens.plan.document import Plan, PlanUnit
    from prunelens.plan.llmcompressor_recipe import recipe_yaml

    model = _hostile_model_dir(tmp_path, tiny[0], hostile)
    plan = Plan(model_id=str(model), config_hash="x", method=hostile, temperature=1.0, budget=hostile,
                strategy=hostile, units=[PlanUnit(unit="L1.mlp", method="wanda:sparsity=0.5")], num_layers=4)
    text = recipe_yaml(plan)
    data = _tagless_yaml(text, {"oneshot_stage"})
    assert data["oneshot_stage"]["wanda_modifiers"]["WandaPruningModifier"]["sparsity"] == 0.5
    assert len([ln for ln in text.splitlines() if ln.startswith("#")]) == 3  # the header is three comment lines
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_mergekit_yaml_quotes_model_id_and_strategy(tmp_path, tiny, hostile):
    from prunelens.plan.document import Plan, PlanUnit

    model = _hostile_model_dir(tmp_path, tiny[0], hostile)
    plan = Plan(model_id=str(model), config_hash="x", method=hostile, temperature=1.0, budget=1, strategy=hostile,
                units=[PlanUnit(unit="L1", method="drop")], num_layers=4)
    for model_id in (str(model), hostile):  # a directory (resolved) and a string kept as a hub id
        plan.model_id = model_id
        text = plan.to_mergekit_yaml()
        data = _tagless_yaml(text, {"slices", "merge_method", "dtype"})
        assert [s["sources"][0]["layer_range"] for s in data["slices"]] == [[0, 1], [2, 4]]
        expect = str(tiny[0].resolve()) if model_id != hostile else hostile
        assert data["slices"][0]["sources"][0]["model"] == expect  # the body: serialised by the library


@pytest.mark.parametrize("hostile", HOSTILE)
def test_report_plan_section_keeps_plan_strings_on_their_line(hostile):
    from prunelens.plan.document import Plan, PlanUnit
    from prunelens.workflow.report import _plan_section

    plan = Plan(model_id=hostile, config_hash="x", method=hostile, temperature=1.0, budget=hostile, strategy=hostile,
                units=[PlanUnit(unit="L1", method=hostile), PlanUnit(unit="L2", method="drop")], num_layers=4)
    entries = _plan_section(plan)
    lines = "\n".join(entries).splitlines()
    assert [e.count("\n") for e in entries] == [0, 0, 0, 0, 3, 0, 0, 0]  # only the table (4 lines) spans lines
    assert all(ESC not in ln and "\u2028" not in ln and "\x85" not in ln for ln in lines)
    assert not [ln for ln in lines if ln.startswith(("x:", "key:", "- item", "# ", "!!"))]


# -- the kernel cache opens only what this user built -----------------------------------------------
PLANTED = r'''
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen("MARKER", "w"); if (f) fclose(f); }
int prunelens_sums(void) { return 0; }
int prunelens_dense(void) { return 0; }
'''


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A fresh ``PRUNELENS_HOME`` and an empty library table; skipped where no C compiler exists."""
    from prunelens.probe import kernel_cache, vocab_pass_c

    monkeypatch.delenv("CC", raising=False)
    if vocab_pass_c.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("PRUNELENS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(vocab_pass_c, "_LIB", {})
    monkeypatch.setattr(kernel_cache, "_PRIVATE", [])
    return vocab_pass_c


def _plant(vocab_pass_c, target: Path, marker: Path) -> None:
    """Compile a library whose constructor creates ``marker`` to ``target``."""
    src = target.with_name("planted.c")
    src.write_text(PLANTED.replace("MARKER", str(marker)))
    subprocess.run([vocab_pass_c.compiler(), "-shared", "-fPIC", "-o", str(target), str(src)], check=True)
    src.unlink()


def _sums_work(vocab_pass_c, lib) -> None:
    z = torch.randn(3, 50)
    per, once = vocab_pass_c.native_sums(lib, z, z + 0.1, z.amax(-1), (z * z).sum(-1), torch.tensor([1.0]))
    assert per.shape == (10, 1, 3) and bool(torch.isfinite(once).all())


@pytest.mark.parametrize("how", ["no digest", "forged digest, group-writable file", "forged digest, foreign owner",
                                 "forged digest, world-writable folder", "symlink to a planted file"])
def test_a_planted_kernel_library_never_runs(tmp_path, kernel_env, how):
    from prunelens.probe import kernel_cache

    vocab_pass_c = kernel_env
    path = vocab_pass_c.library_path()
    marker = tmp_path / "PLANTED_RAN"
    planted = path if how != "symlink to a planted file" else tmp_path / "elsewhere.so"
    _plant(vocab_pass_c, planted, marker)
    if how == "symlink to a planted file":
        path.symlink_to(planted)
        kernel_cache.digest_path(path).write_text(kernel_cache.sha256_of(planted))
    elif how != "no digest":
        kernel_cache.digest_path(path).write_text(kernel_cache.sha256_of(path))
    if how.endswith("group-writable file"):
        path.chmod(0o664)
    elif how.endswith("foreign owner"):
        if os.getuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(path, 12345, 12345)
    elif how.endswith("world-writable folder"):
        path.parent.chmod(0o777)
    with pytest.warns(UserWarning, match="writable by others") if "folder" in how else _no_warning():
        lib, built_s = vocab_pass_c.load_library()
    assert not marker.exists(), "the planted constructor ran"
    assert built_s > 0  # rebuilt, not loaded
    _sums_work(vocab_pass_c, lib)
    used = vocab_pass_c.library_path()
    assert kernel_cache.trusted(used) and (used == path) == ("folder" not in how)
    assert (used.parent.stat().st_mode & 0o077) == 0  # rebuilt into a private folder (0700)


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "empty", "delete the digest"])
def test_a_corrupt_kernel_library_is_rebuilt_once_then_loaded(kernel_env, damage):
    from prunelens.probe import kernel_cache

    vocab_pass_c = kernel_env
    vocab_pass_c.load_library()
    path = vocab_pass_c.library_path()
    raw = path.read_bytes()
    damaged = {"truncate": raw[: len(raw) // 3], "flip a byte": raw[:64] + bytes([raw[64] ^ 0xFF]) + raw[65:],
               "empty": b""}.get(damage)
    if damaged is None:
        kernel_cache.digest_path(path).unlink()
    else:  # a new file in its place (this process has the old one mapped: writing into it would crash it)
        tmp = path.with_name("damaged")
        tmp.write_bytes(damaged)
        os.replace(tmp, path)
    vocab_pass_c._LIB.clear()
    with _no_warning():
        lib, built_s = vocab_pass_c.load_library()
    assert built_s > 0 and kernel_cache.trusted(path)
    _sums_work(vocab_pass_c, lib)
    vocab_pass_c._LIB.clear()
    assert vocab_pass_c.load_library()[1] == 0.0  # the next process loads it without building


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "junk", "fails", "no output"])
def test_a_bad_cc_is_named_in_one_line_never_replaced(tmp_path, kernel_env, monkeypatch, cc):
    from prunelens.probe import kernel_cache
    from prunelens.probe.vocab_pass import compiled_kernel

    scripts = {"junk": 'for a; do case "$prev" in -o) echo junk > "$a";; esac; prev=$a; done; exit 0',
               "fails": "echo 'fatal: no licence' >&2; exit 3", "no output": "exit 0"}
    if cc in scripts:
        exe = tmp_path / f"bad-cc-{cc.replace(' ', '-')}"
        exe.write_text("#!/bin/sh\n" + scripts[cc] + "\n")
        exe.chmod(0o755)
        cc = str(exe)
    monkeypatch.setenv("CC", cc)
    with pytest.raises(RuntimeError) as err:
        compiled_kernel((torch.zeros(2, 8),) * 4 + (torch.ones(1),))
    msg = str(err.value)
    assert "\n" not in msg and f"$CC={cc}" in msg, msg
    assert not [p for p in kernel_cache.cache_dir().iterdir()]  # nothing kept, nothing half-written


# -- a method that leaves the model changed is stopped; its cells are never marked done --------------
DAMAGE_PLUGIN = '''
from contextlib import contextmanager
from prunelens.hookspecs import hookimpl
from prunelens.compression.methods import Method
from prunelens.units import Unit


class ZeroL1Mlp(Method):
    """Test-only: a perturb that zeroes L1.mlp for good (never restored), whatever its unit."""

    name = "zero_l1_mlp"

    @contextmanager
    def perturb(self, adapter, unit, stats=None):
        for p in adapter.module(Unit.parse("L1.mlp")).parameters():
            p.data = p.data * 0
        yield


@hookimpl
def register_methods(register):
    register(ZeroL1Mlp)
'''


@pytest.fixture(scope="module")
def damage_method(tmp_path_factory):
    from prunelens.plugins import load_plugin_file

    path = tmp_path_factory.mktemp("damageplugin") / "damage_plugin.py"
    path.write_text(DAMAGE_PLUGIN)
    load_plugin_file(path)
    return parse_method("zero_l1_mlp")


def test_a_method_that_damages_another_layer_is_stopped_and_its_cells_not_done(tmp_path, damage_method):
    path = save_tiny(tmp_path / "llama4", layers=4)
    loaded = load_model(str(path))  # its own copy: the method damages it
    before = weights_fingerprint(loaded.model)
    out = tmp_path / "damaged.zarr"
    with pytest.raises(PrunelensError) as err:
        probe(loaded, out, methods=["magnitude:sparsity=0.3", damage_method], units="L0-3")
    msg = str(err.value)
    assert "\n" not in msg and "'zero_l1_mlp'" in msg and "after its cell on L0" in msg and "(L1)" in msg, msg
    assert weights_fingerprint(loaded.model) != before  # the damage was real
    with pytest.raises(PrunelensError):
        open_store(out)  # not complete
    ds = open_store(out, allow_incomplete=True)
    done = np.asarray(ds["done"].values, dtype=bool)
    assert done.tolist() == [[True, False, False, False], [False, False, False, False]]  # magnitude L0 only
    # the cell written before the damage equals a clean run's (the well-behaved method is unaffected)
    clean = tmp_path / "clean.zarr"
    attrs = probe(load_model(str(path)), clean, methods=["magnitude:sparsity=0.3"], units="L0-3")
    assert attrs["complete"] and attrs.get("nonfinite_cells", 0) == 0
    ref = open_store(clean)
    for var in ("kl", "cos_dev"):
        got = ds[var].sel({"method": "magnitude:sparsity=0.3", "unit": "L0"}).values
        want = ref[var].sel({"method": "magnitude:sparsity=0.3", "unit": "L0"}).values
        np.testing.assert_allclose(got, want, rtol=0, atol=0)  # same computation, same weights: bit-equal


def test_weight_guard_names_each_changed_layer_and_accepts_a_restored_swap(tiny):
    from prunelens.probe.integrity import OTHER, WeightGuard, layer_of

    assert [layer_of(n) for n in ("model.layers.3.mlp.up_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
                                  "transformer.h.12.attn.c_attn.weight")] == ["L3", OTHER, OTHER, "L12"]
    model = tiny[1].model
    guard = WeightGuard(model)
    w = model.model.layers[2].self_attn.q_proj.weight
    norm = model.model.norm.weight
    saved, saved_norm = w.data, norm.data
    w.data = w.data.clone()  # another tensor, the same bytes: fine
    assert guard.changed() == []
    w.data[0, 0] = torch.nextafter(w.data[0, 0], torch.tensor(1e9))  # one ulp
    norm.data = norm.data + 1
    try:
        assert guard.changed() == ["L2", OTHER]
        with pytest.raises(PrunelensError, match=r"method 'm' left .* on L2 \(L2, embeddings/norm/head\)"):
            guard.check("m", "L2")
    finally:
        w.data, norm.data = saved, saved_norm
    assert guard.changed() == []


# -- allocators: OWL meets its own budget; the knapsack grid is bounded --------------------------------
OWL_RATIOS = {0.3: [8.133, 9.128, 6.066, 7.295], 0.5: [3.118, 4.233, 8.277, 4.092], 0.6: [6.154, 3.837, 9.972, 9.808],
              0.7: [4.858, 8.895, 9.34, 3.578]}  # levels rounded to nearest 4 decimals: mean 2.5e-5 below target


@pytest.mark.parametrize("target", sorted(OWL_RATIOS))
def test_owl_meets_its_own_budget_whatever_the_rounding(tiny, monkeypatch, target):
    import prunelens_plugins.allocators as A
    from prunelens.plan.allocation import allocate_plan

    path, loaded = tiny
    ratios = OWL_RATIOS[target]
    exact = A.owl_sparsities(ratios, target, 0.1)
    assert np.mean([round(float(s), 4) for s in exact]) < target * (1 - 1e-6)  # what was refused
    monkeypatch.setattr(A, "owl_outlier_ratios", lambda *a, **k: ratios)
    ds = synthetic_store(num_layers=4, methods=("wanda:sparsity=0.5",),
                         attrs={"model_id": loaded.model_id, "config_hash": loaded.config_hash, "complete": True})
    plan = allocate_plan(ds, allocator="owl", budget=f"sparsity={target}", temperature=1.0, methods=["wanda"],
                         loaded=loaded, calib_ids=torch.zeros(1, 4, dtype=torch.long), lmbda=0.1)
    got = np.array([parse_method(u.method).values["sparsity"] for u in plan.units])
    assert np.all(got >= exact - 1e-12) and np.all(got - exact < 1e-4)  # each level rounded up, by < 1e-4
    assert target <= plan.allocation["achieved"] < target + 1e-4


@pytest.mark.parametrize("resolution,ok", [("9", False), ("10", True), ("1000000", True), ("1000001", False),
                                           ("99999999", False)])
def test_knapsack_resolution_is_bounded(resolution, ok):
    from prunelens.plan.allocation import get_allocator

    for name in ("knapsack", "iterative"):
        try:
            get_allocator(name, resolution=resolution)
        except PrunelensError as exc:
            assert not ok and "resolution must lie in [10, 1000000]" in str(exc) and "\n" not in str(exc)
        else:
            assert ok


# -- plan fields are type-checked: one line in apply and validate, nothing written --------------------
BAD_FIELDS = [("temperature", "hot"), ("temperature", 0), ("temperature", -1.0), ("temperature", True),
              ("model_id", 12345), ("config_hash", None), ("num_layers", "four"), ("num_layers", True),
              ("num_layers", 0), ("allocation", "junk"), ("allocation", [1, 2]), ("budget", True), ("budget", [1]),
              ("iterative", "yes"), ("strategy", {"x": 1}), ("predicted_kl_total", "inf"), ("measured", 3),
              ("unit.score", "high"), ("unit.params", -3), ("unit.params", 2.5), ("unit.predicted_kl", [0.1]),
              ("unit.unit", 7), ("unit.method", 5)]


def _plan_dict(path: Path, loaded) -> dict:
    return {"schema_version": 2, "model_id": str(path), "config_hash": loaded.config_hash, "method": "drop",
            "units": [{"unit": "L1", "score": 0.1, "predicted_kl": 0.1, "params": 10, "method": "drop"}],
            "temperature": 1.0, "budget": 1, "strategy": "kl_pred", "num_layers": 4, "allocation": {}}


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_plan_fields_of_the_wrong_type_are_one_line_in_apply_and_validate(tmp_path, tiny, field, value):
    path, loaded = tiny
    d = _plan_dict(path, loaded)
    if field.startswith("unit."):
        d["units"][0][field[5:]] = value
    else:
        d[field] = value
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(d))
    res = cli("apply", plan, "--out", tmp_path / "ck")
    line = one_line_error(res, f"field '{field.removeprefix('unit.')}' must be")
    assert not (tmp_path / "ck").exists(), line
    res = cli("validate", plan, "--checkpoint", tmp_path)
    one_line_error(res, f"field '{field.removeprefix('unit.')}' must be")


def test_a_well_typed_plan_applies_and_its_checkpoint_record_is_the_plan(tmp_path, tiny):
    from prunelens.plan.document import Plan

    path, loaded = tiny
    d = _plan_dict(path, loaded)
    d["temperature"], d["num_layers"] = 1, 4  # an integer temperature is a number
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(d))
    res = cli("apply", plan, "--out", tmp_path / "ck")
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "ck" / "prunelens.json").read_text())["plan"]
    assert set(record) <= set(Plan.__dataclass_fields__)
    assert record["units"][0]["unit"] == "L1" and record["num_layers"] == 4 and record["allocation"] == {}


# -- checkpoint:path= reads float weights only -------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.bool])
def test_checkpoint_method_refuses_integer_tensors_of_the_right_shape(tmp_path, tiny, dtype):
    import shutil

    from safetensors.torch import load_file, save_file

    path, loaded = tiny
    ck = tmp_path / "int-ck"
    shutil.copytree(path, ck)
    (st,) = ck.glob("*.safetensors")
    tensors = load_file(str(st))
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = (tensors[name] * 100).round().clamp(-127, 127).to(dtype)  # int8 codes, no scale
    save_file(tensors, str(st), metadata={"format": "pt"})
    before = weights_fingerprint(loaded.model)
    with pytest.raises(PrunelensError) as err:
        probe(loaded, tmp_path / "s.zarr", methods=[f"checkpoint:path={ck}"], units="L1.mlp")
    msg = str(err.value)
    assert "\n" not in msg and name in msg and str(dtype).removeprefix("torch.") in msg and "not read" in msg, msg
    assert weights_fingerprint(loaded.model) == before


# -- apply's checkpoint points at no code it did not copy -----------------------------------------------
def test_apply_and_compress_drop_auto_map_from_config_and_tokenizer(tmp_path, tiny):
    import shutil

    path, loaded = tiny
    src = tmp_path / "with-auto-map"
    shutil.copytree(path, src)
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    for name in ("config.json", "tokenizer_config.json"):
        f = src / name
        if f.is_file():
            f.write_text(json.dumps({**json.loads(f.read_text()), "auto_map": auto_map}))
    (src / "modeling_x.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    d = _plan_dict(src, load_model(str(src)))  # its own config hash (auto_map is part of the config)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(d))
    res = cli("apply", plan, "--out", tmp_path / "ck")
    assert res.exit_code == 0, res.output
    res = cli("compress", "--model", src, "--method", "drop", "--units", "L1", "--out", tmp_path / "ck2")
    assert res.exit_code == 0, res.output
    for out in (tmp_path / "ck", tmp_path / "ck2"):
        assert "auto_map" not in json.loads((out / "config.json").read_text())
        assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
        assert not list(out.glob("*.py")) and not (tmp_path / "ran").exists()
        assert load_model(str(out)).adapter.num_layers == 3
    assert json.loads((src / "config.json").read_text())["auto_map"] == auto_map  # the source is left alone
    assert json.loads((src / "tokenizer_config.json").read_text())["auto_map"] == auto_map


# -- byte budgets are whole bytes ---------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [("bytes=0.5", None), ("bytes=0.999", None), ("bytes=0", None),
                                       ("bytes=-1KB", None), ("bytes=1", 1), ("bytes=1.5", 1), ("bytes=0.5KB", 500),
                                       ("bytes=1.5KiB", 1536)])
def test_byte_budgets_below_one_byte_are_refused_others_floored(text, want):
    from prunelens.plan.budgets import parse_budget_spec

    if want is None:
        with pytest.raises(PrunelensError, match=r"must be (at least 1 byte|positive)|not a number"):
            parse_budget_spec(text)
        return
    b = parse_budget_spec(text)
    assert b.value == want and b.text == f"bytes={want}"


def test_plan_with_a_sub_byte_budget_is_one_line(tmp_path):
    store = tmp_path / "s.zarr"
    synthetic_store(num_layers=4, attrs={"model_id": "tiny", "config_hash": "abc", "complete": True}).to_zarr(
        store, mode="w", consolidated=False, zarr_format=3)
    res = cli("plan", store, "--budget", "bytes=0.5", "--out", tmp_path / "p.json")
    one_line_error(res, "bytes=0.5", "at least 1 byte")
    assert not (tmp_path / "p.json").exists()


def test_a_hostile_model_path_end_to_end_exports_parse_and_run_nothing(tmp_path, tiny):
    """A model directory named ``m\\nx: !!python/object/apply:os.system [...]\\n#``: probe, plan with both exports,
    report with the plan; every YAML parses with ``safe_load`` with no tag, the Markdown keeps it on one line."""
    import yaml

    path, _ = tiny
    hostile = f"m\nx: !!python/object/apply:os.system ['touch {tmp_path}/PWNED']\n#"
    model = _hostile_model_dir(tmp_path, path, hostile)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w5 w6 w7 w8 w9\nw10 w11 w12\nw13 w14 w15 w16 w17 w18\n")
    store = tmp_path / "s.zarr"
    res = cli("probe", "--model", model, "--method", "rtn", "--method", "drop", "--units", "L1,L2", "--samples", "3",
              "--prompt-len", "6", "--steps", "3", "--batch-size", "3", "--prompts", prompts, "--device", "cpu",
              "--quiet", "--out", store)
    assert res.exit_code == 0, res.output
    res = cli("plan", store, "--budget", "1", "--method", "rtn", "--llmcompressor", tmp_path / "r.yaml",
              "--out", tmp_path / "rtn.json")
    assert res.exit_code == 0, res.output
    res = cli("plan", store, "--budget", "1", "--method", "drop", "--mergekit", tmp_path / "m.yaml",
              "--out", tmp_path / "drop.json")
    assert res.exit_code == 0, res.output
    for name, keys in (("r.yaml", {"oneshot_stage"}), ("m.yaml", {"slices", "merge_method", "dtype"})):
        text = (tmp_path / name).read_text()
        _tagless_yaml(text, keys)
        assert hostile.splitlines()[1] not in text.splitlines()  # the injected line is not a line of the file
    assert yaml.safe_load((tmp_path / "m.yaml").read_text())["slices"][0]["sources"][0]["model"] == str(path.resolve())
    res = cli("report", store, "--plan", tmp_path / "drop.json", "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert not [ln for ln in md.splitlines() if ln.startswith(("x:", "x: !!"))]
    assert not (tmp_path / "PWNED").exists()


def test_accelerator_word_sums_equal_numpy_and_see_one_ulp_and_a_swap(monkeypatch):
    """The checksum an accelerator computes (run here on the CPU), against numpy's wrapping int64 sums."""
    from prunelens.probe import integrity

    monkeypatch.setattr(integrity, "_CHUNK", 7)  # several chunks, the last one short
    g = torch.Generator().manual_seed(0)
    for t in (torch.randn(50, generator=g), torch.randn(25, generator=g).to(torch.bfloat16), torch.arange(5).byte()):
        raw = t.numpy().view(np.uint8) if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().view(np.uint8)
        w = (raw.view(np.int32) if raw.size % 4 == 0 else raw).astype(np.int64)
        with np.errstate(over="ignore"):
            want = (int(w.sum()), int((w * np.arange(1, w.size + 1, dtype=np.int64)).sum()))
        assert integrity.word_sums(t) == want
    t = torch.randn(50, generator=g)
    base = integrity.word_sums(t)
    ulp = t.clone()
    ulp[17] = torch.nextafter(ulp[17], torch.tensor(1e9))
    swapped = t.clone()
    swapped[[3, 40]] = swapped[[40, 3]]
    assert integrity.word_sums(ulp) != base and integrity.word_sums(swapped) != base


INPLACE_DAMAGE_PLUGIN = '''
from contextlib import contextmanager
from prunelens.hookspecs import hookimpl
from prunelens.compression.methods import Method
from prunelens.units import Unit


class ScaleL3InPlace(Method):
    """Test-only: scales L3.mlp in place for good (the tensors stay the same objects), whatever its unit."""

    name = "scale_l3_inplace"

    @contextmanager
    def perturb(self, adapter, unit, stats=None):
        for p in adapter.module(Unit.parse("L3.mlp")).parameters():
            p.data.mul_(0.5)
        yield


@hookimpl
def register_methods(register):
    register(ScaleL3InPlace)
'''


def test_an_in_place_damage_elsewhere_is_caught_by_the_full_check_before_any_later_cell_is_done(
        tmp_path, monkeypatch):
    """Between full checks only the unit's own layer is read: a damage elsewhere is found by the next full check,
    and no cell since the last passed check is marked done."""
    from prunelens.plugins import load_plugin_file
    from prunelens.probe.integrity import CellGate

    plugin = tmp_path / "inplace_plugin.py"
    plugin.write_text(INPLACE_DAMAGE_PLUGIN)
    load_plugin_file(plugin)
    monkeypatch.setattr(CellGate, "ALWAYS", 0.0)  # as on a big model: full checks only now and then ...
    monkeypatch.setattr(CellGate, "SHARE", 1e-9)  # ... here never before the run's end
    path = save_tiny(tmp_path / "llama4", layers=4)
    out = tmp_path / "inplace.zarr"
    with pytest.raises(PrunelensError) as err:
        probe(load_model(str(path)), out, methods=["magnitude:sparsity=0.3", parse_method("scale_l3_inplace")],
              units="L0-2")
    msg = str(err.value)
    assert "\n" not in msg and "one of magnitude:sparsity=0.3, scale_l3_inplace" in msg and "(L3)" in msg, msg
    done = np.asarray(open_store(out, allow_incomplete=True)["done"].values, dtype=bool)
    assert not done.any()  # every cell ran after (or beside) the damage: none is done, a rerun recomputes them


def test_deferred_full_checks_mark_every_clean_cell_done(tmp_path, monkeypatch):
    from prunelens.probe.integrity import CellGate

    monkeypatch.setattr(CellGate, "ALWAYS", 0.0)
    monkeypatch.setattr(CellGate, "SHARE", 1e-9)  # one full check, at the end
    marks: list[int] = []
    real_flush = CellGate.flush

    def counting_flush(self):
        marks.append(len(self.pending))
        real_flush(self)

    monkeypatch.setattr(CellGate, "flush", counting_flush)
    path = save_tiny(tmp_path / "llama4", layers=4)
    attrs = probe(load_model(str(path)), tmp_path / "ok.zarr", methods=["magnitude:sparsity=0.3"], units="L0-3")
    assert attrs["complete"] and marks == [4]  # the four cells waited for the one full check, then were marked

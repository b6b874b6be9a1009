"""Plugin provenance and hygiene and a torch-free ``prunelens plugins``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

METHOD_PLUGIN = textwrap.dedent(
    '''
    from prunelens.hookspecs import hookimpl
    from prunelens.compression.methods import Param, WeightMethod

    class Flip(WeightMethod):
        """Test method: multiply every weight by -scale."""
        name = "{name}"
        params = {{"scale": Param(float, 1.0, "factor")}}

        def compress_weight(self, weight, stats=None):
            return -self.scale * weight

    @hookimpl
    def register_methods(register):
        register(Flip)
    '''
)


def _fake_distribution(root: Path, dist: str, module: str, source: str, version: str = "1.2.3") -> None:
    """An installed distribution as importlib.metadata sees one: a module plus its .dist-info."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"  # as pip names it (a '-' would read as prunelens)
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[prunelens]\n{dist} = {module}\n")


def _env(tmp_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PRUNELENS_LOAD_PLUGINS", None)
    env.pop("PRUNELENS_OVERRIDE", None)
    if tmp_path is not None:
        env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _py(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return _py(f"from prunelens.cli import main; main({args!r})", env)


# -- listing built-ins imports no torch ------------------------------------------------
def test_plugins_listing_imports_no_torch():
    code = ("import sys, json\n"
            "from prunelens.cli import main\n"
            "try:\n    main(['plugins', '--json'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    res = _py(code, _env(PRUNELENS_LOAD_PLUGINS=""))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "NO-TORCH"
    listed = {p["name"]: p for p in json.loads(res.stdout)}
    assert listed["magnitude"]["methods"] == ["magnitude"] and listed["magnitude"]["source"] == "builtin"
    assert listed["rankers"]["rankers"] == ["angular", "block_influence", "kl", "kl_pred", "llm_drop"]
    assert listed["drop"]["distribution"] == "prunelens"


def test_builtin_manifest_matches_what_the_hooks_register():
    """The declared manifest (used to list without importing) equals what importing the built-ins registers."""
    from prunelens.plugins import BUILTIN_MANIFEST, BUILTIN_MODULES, REGISTRY_KINDS, plugin_infos

    real = {i.name: i for i in plugin_infos(import_builtins=True) if i.source == "builtin"}
    assert set(real) == set(BUILTIN_MANIFEST) == {m.rsplit(".", 1)[-1] for m in BUILTIN_MODULES}
    for name, declared in BUILTIN_MANIFEST.items():
        assert real[name].hooks == declared["hooks"], name
        for kind, _ in REGISTRY_KINDS:
            assert getattr(real[name], kind) == sorted(declared.get(kind, [])), (name, kind)


# -- overriding a built-in is an explicit opt-in -------------------------------------------------
def test_overriding_a_builtin_needs_opt_in(tmp_path):
    _fake_distribution(tmp_path, "prunelens-fakedrop", "prunelens_fakedrop", METHOD_PLUGIN.format(name="drop"))
    code = "from prunelens.compression.methods import method_registry; print(method_registry()['drop'][0])"
    res = _py(code, _env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "drop"  # the built-in is kept
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "a built-in name" in lines[0] and "PRUNELENS_OVERRIDE=drop" in lines[0]
    res = _py(code, _env(tmp_path, PRUNELENS_OVERRIDE="drop"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "prunelens-fakedrop"
    # the same after a torch-free listing (entry points registered before the built-ins)
    listed_first = "from prunelens.plugins import plugin_infos; plugin_infos(import_builtins=False); " + code
    assert _py(listed_first, _env(tmp_path)).stdout.strip() == "drop"
    assert _py(listed_first, _env(tmp_path, PRUNELENS_OVERRIDE="drop")).stdout.strip() == "prunelens-fakedrop"


# -- PRUNELENS_LOAD_PLUGINS typos, broken plugins: one line each --------------------------------
def test_allowlist_name_matching_nothing_is_warned(tmp_path):
    _fake_distribution(tmp_path, "prunelens-flip", "prunelens_flip", METHOD_PLUGIN.format(name="flip"))
    res = _cli(["plugins", "--json"], _env(tmp_path, PRUNELENS_LOAD_PLUGINS="nosuch,prunelens-flip"))
    assert res.returncode == 0, res.stderr
    assert "prunelens-flip" in {p["name"] for p in json.loads(res.stdout)}
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == ["prunelens: warning: PRUNELENS_LOAD_PLUGINS names 'nosuch', which matches no installed "
                     "prunelens plugin"]


def test_a_broken_plugin_is_one_line_without_a_source_path(tmp_path):
    _fake_distribution(tmp_path, "prunelens-broken", "prunelens_broken", "import nosuchmodule_xyz\n")
    res = _cli(["plugins", "--json"], _env(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "prunelens-broken" in lines[0] and "nosuchmodule_xyz" in lines[0]
    assert "Warning:" not in lines[0] and ".py:" not in lines[0]
    broken = next(p for p in json.loads(res.stdout) if p["name"] == "prunelens-broken")
    assert "nosuchmodule_xyz" in broken["error"] and broken["distribution"] == "prunelens-broken"


# -- provenance is recorded in the store ---------------------------------------------------------
@pytest.mark.slow
def test_store_records_plugin_distribution_and_version(tmp_path):
    from rank_helpers import save_tiny

    model = save_tiny(tmp_path / "tiny", layers=2)
    _fake_distribution(tmp_path, "prunelens-flip", "prunelens_flip", METHOD_PLUGIN.format(name="flip"), "4.5.6")
    store = tmp_path / "p.zarr"
    args = ["probe", "--model", str(model), "--method", "flip:scale=2", "--method", "drop", "--units", "L0", "--samples",
            "2", "--steps", "2", "--prompt-len", "4", "--temperature", "1.0", "--locality", "propagated", "--timing",
            "teacher_forced", "--device", "cpu", "--no-compile", "--quiet", "--out", str(store)]
    res = _cli(args, _env(tmp_path, PRUNELENS_LOAD_PLUGINS="prunelens-flip"))
    assert res.returncode == 0, res.stderr
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    methods = json.loads(attrs["methods"])
    assert methods["flip:scale=2.0"]["plugin"] == {"plugin": "prunelens-flip", "distribution": "prunelens-flip",
                                                   "version": "4.5.6", "source": "entry-point"}
    from prunelens import __version__

    assert methods["drop"]["plugin"]["distribution"] == "prunelens"
    assert methods["drop"]["plugin"]["version"] == __version__
    assert json.loads(attrs["versions"])["prunelens-flip"] == "4.5.6"
    assert json.loads(attrs["tokenization"])["adds_bos"] is False


# -- apply checks the plan's method before loading the model ------------------------------------
def test_apply_with_a_method_not_installed_fails_before_loading(tmp_path):
    from click.testing import CliRunner

    from prunelens.cli import main

    plan = {"schema_version": 1, "model_id": str(tmp_path / "no-such-model"), "config_hash": "0", "method": "lowrank:rank=8",
            "units": [{"unit": "L0"}], "temperature": 1.0, "budget": 1, "strategy": "kl_pred"}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    res = CliRunner().invoke(main, ["apply", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "unknown method 'lowrank'" in res.output  # not "model path not found": the model was never loaded
    assert not (tmp_path / "out").exists()

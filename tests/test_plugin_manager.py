"""The plugin system: built-ins, a local file, an installed distribution, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

PLUGIN_SOURCE = textwrap.dedent(
    '''
    import torch
    from prunelens.hookspecs import hookimpl
    from prunelens.compression.methods import Param, WeightMethod

    class SignFlip(WeightMethod):
        """Test method: multiply every weight of a unit by -scale."""
        name = "{name}"
        params = {{"scale": Param(float, 1.0, "factor", check=lambda v: None if v > 0 else "must be > 0")}}

        def compress_weight(self, weight, stats=None):
            return -self.scale * weight

    @hookimpl
    def register_methods(register):
        register(SignFlip)
    '''
)


def _run(args, env_extra=None, cwd=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", "from prunelens.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, cwd=cwd)


def _plugins_json(*args, env=None):
    res = _run([*args, "plugins", "--json"], env)
    assert res.returncode == 0, res.stderr
    return {p["name"]: p for p in json.loads(res.stdout)}


def test_builtins_are_listed_through_the_hooks():
    plugins = _plugins_json(env={"PRUNELENS_LOAD_PLUGINS": ""})
    assert "magnitude" in plugins["magnitude"]["methods"]
    assert plugins["magnitude"]["hooks"] == ["register_methods"]
    assert {"llama", "qwen2", "mistral", "gemma3_text", "gpt2", "gpt_neox"} <= set(plugins["architectures"]["architectures"])


def test_local_plugin_file_is_listed_and_usable(tmp_path, tiny_llama):
    path = tmp_path / "signflip.py"
    path.write_text(PLUGIN_SOURCE.format(name="signflip"))
    plugins = _plugins_json("--plugin", str(path), env={"PRUNELENS_LOAD_PLUGINS": ""})
    assert plugins["signflip"]["methods"] == ["signflip"] and plugins["signflip"]["source"] == "file"

    from prunelens.compression.methods import parse_method
    from prunelens.model.adapters import get_adapter
    from prunelens.plugins import load_plugin_file
    from prunelens.units import Unit

    load_plugin_file(path)
    method = parse_method("signflip:scale=2")
    ad = get_adapter(tiny_llama)
    w = ad.layers[0].mlp.up_proj.weight
    original = w.detach().clone()
    with method.perturb(ad, Unit(0, "mlp")):
        torch.testing.assert_close(ad.layers[0].mlp.up_proj.weight, -2 * original)
    assert torch.equal(ad.layers[0].mlp.up_proj.weight, original)


def _fake_distribution(root: Path, dist: str, module: str, source: str) -> None:
    """An installed distribution as importlib.metadata sees one: a module plus its .dist-info."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[prunelens]\n{dist} = {module}\n")


def test_installed_distribution_autoloads_and_respects_the_allowlist(tmp_path):
    _fake_distribution(tmp_path, "prunelens-signflip", "prunelens_signflip", PLUGIN_SOURCE.format(name="epflip"))
    env = {"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = dict(os.environ, **env)
    base.pop("PRUNELENS_LOAD_PLUGINS", None)
    res = subprocess.run([sys.executable, "-c", "from prunelens.cli import main; main()", "plugins", "--json"],
                         capture_output=True, text=True, env=base)
    assert res.returncode == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)}
    assert plugins["prunelens-signflip"]["methods"] == ["epflip"]
    assert plugins["prunelens-signflip"]["version"] == "1.2.3"
    assert plugins["prunelens-signflip"]["source"] == "entry-point"
    # usable: parse and apply it in that environment
    code = ("from prunelens.compression.methods import parse_method; m = parse_method('epflip:scale=3'); "
            "import torch; print(m.compress_weight(torch.ones(2, 2), None).sum().item())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.strip()) == pytest.approx(-12.0)
    # allowlist: empty disables autoload, naming the distribution enables it
    assert "prunelens-signflip" not in _plugins_json(env=dict(env, PRUNELENS_LOAD_PLUGINS=""))
    assert "prunelens-signflip" in _plugins_json(env=dict(env, PRUNELENS_LOAD_PLUGINS="prunelens-signflip"))
    assert "prunelens-signflip" not in _plugins_json(env=dict(env, PRUNELENS_LOAD_PLUGINS="someother"))


def test_a_failing_plugin_is_reported_by_name_and_others_survive(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("from prunelens.hookspecs import hookimpl\n"
                   "@hookimpl\ndef register_methods(register):\n    raise RuntimeError('boom')\n")
    plugins = _plugins_json("--plugin", str(bad), env={"PRUNELENS_LOAD_PLUGINS": ""})
    assert "boom" in plugins["broken"]["error"]
    assert "magnitude" in plugins["magnitude"]["methods"]


def test_misspelled_hook_fails_loudly(tmp_path):
    bad = tmp_path / "typo.py"
    bad.write_text("from prunelens.hookspecs import hookimpl\n"
                   "@hookimpl\ndef register_method(register):\n    pass\n")
    res = _run(["--plugin", str(bad), "plugins"], {"PRUNELENS_LOAD_PLUGINS": ""})
    assert res.returncode == 1
    assert "register_method" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_missing_plugin_file_is_a_one_line_error():
    res = _run(["--plugin", "/nonexistent/plug.py", "plugins"], {"PRUNELENS_LOAD_PLUGINS": ""})
    assert res.returncode != 0 and "Traceback" not in res.stderr

"""``--plugin FILE`` before or after the subcommand; a plan's method from a plugin file is named in the error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from prunelens.cli import hoist_plugin_options

PLUGIN = '''
"""randprune: a test method registered from a file."""
import torch
from prunelens.hookspecs import hookimpl
from prunelens.compression.methods import WeightMethod


class RandPrune(WeightMethod):
    name = "randprune"
    calibration = "none"

    def compress_weight(self, weight, stats=None):
        return weight * (torch.arange(weight.numel()).reshape(weight.shape) % 2)


@hookimpl
def register_methods(register):
    register(RandPrune)
'''


@pytest.mark.parametrize("args,expected", [
    (["apply", "--plugin", "f.py", "p.json"], ["--plugin", "f.py", "apply", "p.json"]),
    (["--plugin", "a.py", "rank", "--plugin=b.py", "s"], ["--plugin", "a.py", "--plugin=b.py", "rank", "s"]),
    (["rank", "s", "--", "--plugin", "x"], ["rank", "s", "--", "--plugin", "x"]),
    (["rank", "--plugin"], ["rank", "--plugin"]),  # no value: click reports it
])
def test_plugin_options_move_before_the_subcommand(args, expected):
    assert hoist_plugin_options(args) == expected


def test_plugin_after_the_subcommand_is_loaded(tmp_path):
    (tmp_path / "randprune.py").write_text(PLUGIN)
    env = dict(os.environ, PRUNELENS_LOAD_PLUGINS="", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "prunelens", "plugins", "--json", "--plugin",
                          str(tmp_path / "randprune.py")], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = {p["name"]: p for p in json.loads(res.stdout)}
    assert "randprune" in listed["randprune"]["methods"]


def test_provenance_of_a_file_plugin_names_the_file(tmp_path):
    from prunelens import plugins
    from prunelens.compression.methods import method_provenance

    path = tmp_path / "randprune.py"
    path.write_text(PLUGIN)
    plugins.load_plugin_file(path)
    try:
        prov = method_provenance("randprune")
        assert prov["source"] == "file" and prov["file"] == str(path.resolve())
    finally:  # leave the plugin manager as other tests expect it
        plugins.pm.unregister(name="randprune")
        for table in (plugins._sources, plugins._file_paths):
            table.pop("randprune", None)
        plugins._files.pop(path.resolve(), None)


@pytest.mark.parametrize("recorded,needle", [
    ({"plugin": "randprune", "source": "file", "file": "/x/randprune.py"},
     "recorded it from the plugin file /x/randprune.py; load it with --plugin FILE"),
    ({"plugin": "randprune", "source": "file"}, "from a plugin file (randprune); load it with --plugin FILE"),
    ({"plugin": "rp", "source": "entry-point", "distribution": "prunelens-rp"}, "from the plugin prunelens-rp"),
])
def test_apply_of_a_plugin_method_names_where_it_came_from(tmp_path, recorded, needle):
    from rank_helpers import synthetic_store

    from prunelens.cli import main

    methods = {"randprune": {"name": "randprune", "plugin": recorded}}
    ds = synthetic_store(methods=("randprune",), attrs={"model_id": "tiny", "config_hash": "abc", "complete": True,
                                                        "methods": json.dumps(methods)})
    ds.to_zarr(tmp_path / "s.zarr", mode="w", consolidated=False, zarr_format=3)
    runner = CliRunner()
    made = runner.invoke(main, ["plan", str(tmp_path / "s.zarr"), "--kind", "block", "--budget", "2",
                                "--out", str(tmp_path / "p.json")])
    assert made.exit_code == 0, made.output
    res = runner.invoke(main, ["apply", str(tmp_path / "p.json"), "--out", str(tmp_path / "ck")])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: unknown method 'randprune'") and needle in lines[0]
    assert not (tmp_path / "ck").exists() and not (tmp_path / "ck.partial").exists()

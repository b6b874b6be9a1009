"""``prunelens compress`` takes one option per installed method parameter, built by ``Param.option``."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from prunelens.params import Param


def test_param_builds_its_option():
    opt = Param(int, 128, "columns sharing one scale").option("group_size", ["gptq", "rtn"])
    assert opt.opts == ["--group-size"] and opt.name == "group_size" and opt.type is click.INT
    assert opt.default is None  # not given: the method's own default applies
    assert opt.help == "Columns sharing one scale (methods: gptq, rtn)"
    sym = Param(bool, False, "symmetric", flag="--sym/--asym").option("sym")
    assert sym.opts == ["--sym"] and sym.secondary_opts == ["--asym"] and sym.is_flag
    plain = Param(bool, True, "x").option("fast_path")
    assert plain.opts == ["--fast-path"] and plain.secondary_opts == ["--no-fast-path"]
    assert Param(str, None, "p").option("pattern").type is click.STRING


def test_options_merge_with_the_spec_and_param():
    from prunelens.cli.compress import method_from_options

    m = method_from_options("rtn:bits=8,group_size=64", {"sym": True, "bits": None}, ("bits=3",))
    assert (m.bits, m.group_size, m.sym) == (3, 64, True)  # --param over the spec, an option over both
    m = method_from_options("wanda", {"sparsity": 0.25}, ())
    assert m.spec == "wanda:sparsity=0.25"


def test_an_option_the_method_lacks_is_refused():
    from prunelens.cli.compress import method_from_options
    from prunelens.errors import PrunelensError

    with pytest.raises(PrunelensError, match="method 'wanda' has no parameter bits"):
        method_from_options("wanda", {"bits": 4}, ())


def test_help_lists_builtin_and_plugin_parameters(tmp_path):
    from prunelens.cli import main
    from prunelens.plugins import load_plugin_file

    (tmp_path / "scaler_opts.py").write_text(
        "from prunelens import Param, WeightMethod, hookimpl\n\n"
        "class Scaler(WeightMethod):\n    name = 'scaler_opts'\n"
        "    params = {'gain_opts': Param(float, 0.5, 'gain of the test'), 'seed': Param(int, 0, 'clashes with --seed')}\n\n"
        "    def compress_weight(self, weight, stats=None):\n        return weight * self.gain_opts\n\n"
        "@hookimpl\ndef register_methods(register):\n    register(Scaler)\n")
    load_plugin_file(tmp_path / "scaler_opts.py")
    res = CliRunner().invoke(main, ["compress", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for flag in ("--sparsity FLOAT", "--pattern TEXT", "--bits INTEGER", "--group-size INTEGER", "--sym / --asym",
                 "--gain-opts FLOAT"):
        assert flag in res.output, flag
    assert "Gain of the test (methods: scaler_opts)" in res.output
    assert res.output.count("--seed") == 1  # the command's own --seed; the plugin's seed goes through --param

"""The plugin contract is checked when a plugin registers: a method that cannot work is refused with one
warning naming the plugin and the reason, and every other method (the plugin's own good ones, the built-ins)
keeps working; ``prunelens plugins`` prints the same warnings as a command that uses the methods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAD = "from contextlib import contextmanager\nfrom prunelens import hookimpl, Method, Param, WeightMethod\n\n"
GOOD = '''
class Good_{tag}(WeightMethod):
    name = "good_{tag}"
    def compress_weight(self, weight, stats=None):
        return weight * 0.5
'''
# case -> (the broken class, the reason its warning must give)
CASES = {
    "noname": ('''
class NoName(WeightMethod):
    def compress_weight(self, weight, stats=None):
        return weight
''', "method NoName is refused: it has no name (set the class attribute name = '...')"),
    "nooverride": ('''
class NoOverride(WeightMethod):
    name = "no_override"
''', "method 'no_override' is refused: it does not define compress_weight"),
    "noperturb": ('''
class NoPerturb(Method):
    name = "no_perturb"
''', "method 'no_perturb' is refused: it does not define perturb"),
    "baddefault": ('''
class BadDefault(WeightMethod):
    name = "bad_default"
    params = {"sparsity": Param(float, 1.5, "fraction", check=lambda v: None if 0 <= v < 1 else "must lie in [0, 1)")}
    def compress_weight(self, weight, stats=None):
        return weight
''', "method 'bad_default' is refused: parameter 'sparsity': default 1.5 is invalid: must lie in [0, 1)"),
    "badtype": ('''
class BadType(WeightMethod):
    name = "bad_type"
    params = {"bits": Param(int, "four", "bits")}
    def compress_weight(self, weight, stats=None):
        return weight
''', "method 'bad_type' is refused: parameter 'bits': default 'four' is invalid: parameter bits='four': expected int"),
    "badcalib": ('''
class BadCalib(WeightMethod):
    name = "bad_calib"
    calibration = "hessain"
    def compress_weight(self, weight, stats=None):
        return weight
''', "method 'bad_calib' is refused: unknown calibration 'hessain'; did you mean hessian? "
     "available: hessian, input_norms, none"),
    "notamethod": ('''
class NotAMethod:
    name = "not_a_method"
''', "is not a subclass of prunelens.Method"),
}
ENV = {**os.environ, "PRUNELENS_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1", "PRUNELENS_OVERRIDE": ""}


def _plugin(tmp: Path, tag: str, broken: str) -> Path:
    cls = broken.split("class ", 1)[1].split("(", 1)[0].split(":", 1)[0]
    body = HEAD + broken + GOOD.format(tag=tag) + textwrap.dedent(f'''

    @hookimpl
    def register_methods(register):
        register({cls})
        register(Good_{tag})
    ''')
    path = tmp / f"{tag}.py"
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Every broken plugin loaded in one process that then parses methods: (registry, stderr lines)."""
    tmp = tmp_path_factory.mktemp("contract")
    files = [str(_plugin(tmp, tag, broken)) for tag, (broken, _) in CASES.items()]
    code = textwrap.dedent(f'''
        import json
        from prunelens.plugins import load_plugin_file
        from prunelens.compression.methods import method_registry, parse_method
        for f in {files!r}:
            load_plugin_file(f)
        reg = method_registry()
        method_registry()  # a second look warns nothing new
        assert parse_method("wanda:sparsity=0.3").sparsity == 0.3
        print(json.dumps({{name: owner for name, (owner, _) in reg.items()}}))
    ''')
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), res.stderr.splitlines()


@pytest.mark.parametrize("tag", sorted(CASES))
def test_a_broken_method_is_refused_with_one_warning_and_the_rest_works(loaded, tag):
    registry, warnings = loaded
    reason = CASES[tag][1]
    mine = [w for w in warnings if w.startswith(f"prunelens: warning: plugin '{tag}': ")]
    assert len(mine) == 1, warnings
    assert reason in mine[0]
    assert registry[f"good_{tag}"] == tag  # the plugin's good method still registers
    for builtin in ("magnitude", "wanda", "sparsegpt", "drop", "rtn", "gptq"):
        assert registry[builtin] == builtin  # method name -> the built-in plugin (module) that registers it
    assert registry["checkpoint"] == "checkpoint_swap"
    assert len(warnings) == len(CASES)  # nothing else is warned about


def test_the_checks_on_the_builtins_find_nothing():
    from prunelens.compression.methods import method_problem, method_registry
    from prunelens.plugins import registration_problem

    for name, (_, cls) in method_registry().items():
        assert method_problem(cls) is None, name
    for hook in ("register_tasks", "register_rankers", "register_allocators"):
        from prunelens.plugins import collect

        for owner, item in collect(hook):
            assert registration_problem(hook, item) is None, (owner, item)


def test_a_broken_task_ranker_or_allocator_default_is_refused():
    from prunelens.params import Param
    from prunelens.plan.ranking import Ranker
    from prunelens.plugins import registration_problem

    class Slow(Ranker):
        name = "slow"
        params = {"samples": Param(int, -1, "windows", check=lambda v: None if v > 0 else "must be > 0")}

    assert registration_problem("register_rankers", Slow) == "parameter 'samples': default -1 is invalid: must be > 0"


def test_plugins_lists_the_refusal_and_the_same_shadowing_warning_as_a_command(tmp_path):
    shadow = tmp_path / "shadow.py"
    shadow.write_text(HEAD + textwrap.dedent('''
        class Mine(WeightMethod):
            name = "magnitude"
            def compress_weight(self, weight, stats=None):
                return weight

        @hookimpl
        def register_methods(register):
            register(Mine)
        '''))
    broken = _plugin(tmp_path, "noname", CASES["noname"][0])
    cli = [sys.executable, "-m", "prunelens", "--plugin", str(shadow), "--plugin", str(broken)]
    listed = subprocess.run([*cli, "plugins", "--json"], capture_output=True, text=True, timeout=300, env=ENV)
    assert listed.returncode == 0, listed.stderr
    infos = {i["name"]: i for i in json.loads(listed.stdout)}
    assert infos["noname"]["methods"] == ["good_noname"] and "has no name" in infos["noname"]["error"]
    code = ("import sys\nfrom prunelens.plugins import load_plugin_file\nfrom prunelens.compression.methods import parse_method\n"
            "for f in sys.argv[1:]:\n    load_plugin_file(f)\nparse_method('magnitude')\n")
    used = subprocess.run([sys.executable, "-c", code, str(shadow), str(broken)], capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert used.returncode == 0, used.stderr
    shadowing = "prunelens: warning: plugin 'shadow' registers 'magnitude', a built-in name: ignored"
    assert sorted(listed.stderr.splitlines()) == sorted(used.stderr.splitlines())
    assert len(listed.stderr.splitlines()) == 2 and any(w.startswith(shadowing) for w in listed.stderr.splitlines())


def test_compress_with_a_builtin_works_beside_a_nameless_plugin(tmp_path):
    from rank_helpers import save_tiny

    model = save_tiny(tmp_path / "llama", layers=2)
    broken = _plugin(tmp_path, "noname", CASES["noname"][0])
    res = subprocess.run([sys.executable, "-m", "prunelens", "--plugin", str(broken), "compress", "--model", str(model),
                          "--method", "wanda", "--sparsity", "0.3", "--dry-run", "--device", "cpu", "--json",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [f"prunelens: warning: plugin 'noname': {CASES['noname'][1]}"]
    assert json.loads(res.stdout) and not (tmp_path / "out").exists()

"""The plugin API is importable from ``prunelens`` (lazily: ``import prunelens`` does not import torch), and the
README's smallest method uses only it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_names_are_the_real_classes():
    import prunelens
    from prunelens import Method, Param, PrunelensError, Unit, WeightMethod, errors, hookimpl, hookspecs, params, units
    from prunelens.compression import methods

    assert (hookimpl, Method, WeightMethod, Param, Unit, PrunelensError) == (
        hookspecs.hookimpl, methods.Method, methods.WeightMethod, params.Param, units.Unit, errors.PrunelensError)
    for name in prunelens.__all__:
        assert getattr(prunelens, name) is not None, name
    assert set(prunelens.__all__) <= set(dir(prunelens))


def test_import_prunelens_does_not_import_torch():
    code = "import sys, prunelens; from prunelens import Param, hookimpl; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error():
    import prunelens

    try:
        prunelens.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_readme_smallest_method_is_short_and_uses_only_prunelens():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Write a plugin", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    code = [line for line in block.splitlines() if line.strip()]
    assert len(code) <= 10, code
    imports = [line for line in code if line.startswith(("import ", "from "))]
    assert imports and all(line.startswith("from prunelens import ") for line in imports), imports

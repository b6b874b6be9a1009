"""The README's plugin example is the shipped example file, and it runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_plugin_example_matches_file_and_works(tiny_llama):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = (ROOT / "examples" / "halve_plugin.py").read_text()
    assert any(b.strip() in example for b in blocks), "README plugin example drifted from examples/halve_plugin.py"

    from prunelens.compression.methods import parse_method
    from prunelens.model.adapters import get_adapter
    from prunelens.plugins import load_plugin_file
    from prunelens.units import Unit

    load_plugin_file(ROOT / "examples" / "halve_plugin.py")
    method = parse_method("halve:factor=0.25")
    ad = get_adapter(tiny_llama)
    w = ad.layers[2].self_attn.q_proj.weight.detach().clone()
    with method.perturb(ad, Unit(2, "attn")):
        torch.testing.assert_close(ad.layers[2].self_attn.q_proj.weight, 0.25 * w)
    assert torch.equal(ad.layers[2].self_attn.q_proj.weight, w)


def test_every_hook_is_documented_in_the_readme():
    from prunelens import hookspecs

    readme = (ROOT / "README.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert hooks
    for name in hooks:
        assert f"`{name}`" in readme, name

"""Every package directory is listed in pyproject.toml, so a normal (non-editable) install has it all."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_declared_and_tcss_is_packaged():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    declared = set(cfg["packages"])
    found = set()
    for name, folder in dirs.items():
        base = ROOT / folder
        roots = [p for p in base.iterdir() if p.is_dir()] if name == "" else [base]
        for root in roots:
            for init in root.rglob("__init__.py"):
                rel = init.parent.relative_to(base if name == "" else root)
                parts = list(rel.parts) if name == "" else [name, *rel.parts]
                found.add(".".join(parts))
    assert found == declared, f"undeclared: {sorted(found - declared)}; missing on disk: {sorted(declared - found)}"
    data = cfg["package-data"]
    for tcss in (ROOT / "tui").rglob("*.tcss"):
        pkg = ".".join(["prunelens_tui", *tcss.parent.relative_to(ROOT / "tui").parts])
        assert "*.tcss" in data.get(pkg, []), f"{tcss} would be left out of a wheel"


def test_license_is_an_spdx_expression_with_the_file_shipped():
    """PEP 639: a TOML-table license is deprecated (setuptools stops building it); the SPDX string needs
    setuptools >= 77, and the license text ships as LICENSE."""
    import re

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = doc["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # not beside an SPDX expression
    req = next(r for r in doc["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(re.search(r">=\s*(\d+)", req).group(1)) >= 77
    assert any(r.startswith("lm-eval[hf]") for r in project["optional-dependencies"]["lm-eval"])

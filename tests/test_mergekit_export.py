"""The mergekit YAML of a block-drop plan runs as written: ``model:`` is a checkpoint mergekit can open offline.

mergekit is not a prunelens dependency. The checks that need it run in the environment named by
``PRUNELENS_MERGEKIT_PYTHON`` (a Python with mergekit installed; default ``/tmp/mergekit-venv/bin/python``)
and are skipped when there is none.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from rank_helpers import save_tiny, synthetic_store

from prunelens.model.loading import BUNDLED, load_model, prepared_path
from prunelens.plan.document import mergekit_source
from prunelens.plan.unit_selection import plan_from_store


def _mergekit_python() -> str | None:
    exe = os.environ.get("PRUNELENS_MERGEKIT_PYTHON", "/tmp/mergekit-venv/bin/python")
    if not Path(exe).is_file():
        return None
    ok = subprocess.run([exe, "-c", "import mergekit.config"], capture_output=True).returncode == 0
    return exe if ok else None


@pytest.fixture(scope="module")
def block_plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("mk")
    model_dir = save_tiny(root / "tiny llama", layers=4)  # a space in the path, as users have
    loaded = load_model(str(model_dir))
    ds = synthetic_store(num_layers=4, seed=3, attrs={"model_id": str(model_dir), "config_hash": loaded.config_hash})
    plan = plan_from_store(ds, method="drop", kind="block", temperature=1.0, by="kl_pred", budget=2)
    return root, model_dir, plan


def test_yaml_names_the_checkpoint_directory_not_the_alias(block_plan, monkeypatch):
    root, model_dir, plan = block_plan
    cfg = yaml.safe_load(plan.to_mergekit_yaml())
    assert {s["sources"][0]["model"] for s in cfg["slices"]} == {str(model_dir.resolve())}
    assert Path(cfg["slices"][0]["sources"][0]["model"]).is_absolute()
    # a relative model directory becomes absolute (the YAML may be run from anywhere)
    monkeypatch.chdir(root)
    assert mergekit_source("tiny llama") == str(model_dir.resolve())
    # a bundled alias: its prepared checkpoint, with the alias kept in a comment
    alias = next(iter(BUNDLED))
    assert mergekit_source(alias) == str(prepared_path(alias).resolve())
    plan_alias = type(plan)(**{**plan.__dict__, "model_id": alias})
    text = plan_alias.to_mergekit_yaml()
    assert f"'{alias}'" in text.splitlines()[1] and text.splitlines()[1].startswith("#")
    assert yaml.safe_load(text)["slices"][0]["sources"][0]["model"] == str(prepared_path(alias).resolve())
    assert mergekit_source("org/model") == "org/model"  # a hub id stays a hub id


def test_yaml_validates_against_mergekit_configuration(block_plan, tmp_path):
    exe = _mergekit_python()
    if exe is None:
        pytest.skip("mergekit is not installed (set PRUNELENS_MERGEKIT_PYTHON to a Python that has it)")
    _, _, plan = block_plan
    (tmp_path / "plan.yaml").write_text(plan.to_mergekit_yaml())
    code = ("import sys, yaml; from mergekit.config import MergeConfiguration; "
            "c = MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1]))); "
            "print(c.merge_method, [list(s.sources[0].layer_range) for s in c.slices])")
    res = subprocess.run([exe, "-c", code, str(tmp_path / "plan.yaml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    kept = [i for i in range(4) if f"L{i}" not in plan.unit_names]
    ranges = eval(res.stdout.split(" ", 1)[1])  # noqa: S307 - our own subprocess's list literal
    assert res.stdout.startswith("passthrough") and [i for a, b in ranges for i in range(a, b)] == kept


@pytest.mark.slow
def test_mergekit_yaml_output_equals_prunelens_apply(block_plan, tmp_path):
    """Real ``mergekit-yaml plan.yaml out/`` offline, then every tensor equals ``prunelens apply``'s."""
    exe = _mergekit_python()
    if exe is None:
        pytest.skip("mergekit is not installed (set PRUNELENS_MERGEKIT_PYTHON to a Python that has it)")
    from safetensors.torch import load_file

    from prunelens.plan.apply import apply_plan

    _, _, plan = block_plan
    yaml_path = tmp_path / "plan.yaml"
    yaml_path.write_text(plan.to_mergekit_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = Path(exe).parent / "mergekit-yaml"
    res = subprocess.run([str(cli), str(yaml_path), str(tmp_path / "merged")], capture_output=True, text=True,
                         env=env, cwd=tmp_path / "..")  # from another directory: the YAML must not depend on cwd
    assert res.returncode == 0, res.stderr[-2000:]
    applied, _ = apply_plan(plan, tmp_path / "applied", progress=False)

    def tensors(d: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(f))
        out.pop("lm_head.weight", None)  # tied to the embeddings: either side may store it
        return out

    merged, ours = tensors(tmp_path / "merged"), tensors(applied)
    assert set(merged) == set(ours)
    assert len({n.split(".")[2] for n in ours if n.startswith("model.layers.")}) == 4 - len(plan.units)
    for name in ours:
        torch.testing.assert_close(merged[name], ours[name], rtol=0, atol=0, msg=name)

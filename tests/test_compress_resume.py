"""``compress`` and ``apply`` killed after a finished layer resume from it, with the uninterrupted result bit for bit.

Each run is a real ``prunelens`` subprocess on a tiny saved llama. A test-only plugin file SIGKILLs
the process right after layer ``$KILL_AFTER_LAYER`` is recorded in the work folder (and gives fast,
seeded calibration windows); the rerun (plugin loaded, no kill) must write the same safetensors
bytes as a run that was never interrupted, and leave no work folder behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tiny_model

KILL_PLUGIN = '''
"""Test-only: SIGKILL after layer $KILL_AFTER_LAYER is recorded; seeded calibration windows."""
import os, signal

import torch

import prunelens.text.corpora
import prunelens.compression.resume

AT = int(os.environ.get("KILL_AFTER_LAYER", "-1"))
_save = prunelens.compression.resume.LayerWork.save


def save(self, i, *a, **k):
    _save(self, i, *a, **k)
    if i == AT:
        os.kill(os.getpid(), signal.SIGKILL)


def token_windows(tok, n, length, split="calib", seed=0):
    return torch.randint(2, 96, (n, length), generator=torch.Generator().manual_seed(seed)).numpy()


prunelens.compression.resume.LayerWork.save = save
prunelens.text.corpora.token_windows = token_windows
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_methods_compress import word_tokenizer

    d = tmp_path_factory.mktemp("resume")
    make_tiny_model("llama", layers=4).save_pretrained(d / "tiny")
    word_tokenizer().save_pretrained(d / "tiny")
    (d / "kill.py").write_text(KILL_PLUGIN)
    return d


def _run(setup: Path, args: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PRUNELENS_LOAD_PLUGINS="", HF_HUB_OFFLINE="1",
               TQDM_DISABLE="1", KILL_AFTER_LAYER=str(-1 if kill_after is None else kill_after))
    cmd = [sys.executable, "-m", "prunelens", *args, "--plugin", str(setup / "kill.py")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _interrupted_then_resumed(setup: Path, tmp_path: Path, args: list[str]) -> tuple[bytes, bytes]:
    """(uninterrupted safetensors, killed-after-layer-1-then-rerun safetensors); checks the work folder's life."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    done = _run(setup, [*args, "--out", str(ref)])
    assert done.returncode == 0, done.stderr
    killed = _run(setup, [*args, "--out", str(out)], kill_after=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = tmp_path / "out.partial"
    assert not out.exists() and json.loads((work / "state.json").read_text())["done"] == 1
    resumed = _run(setup, [*args, "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert not work.exists() and not (tmp_path / "ref.partial").exists()
    return (ref / "model.safetensors").read_bytes(), (out / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_compress_killed_after_a_layer_resumes_bit_identical(setup, tmp_path):
    ref, resumed = _interrupted_then_resumed(setup, tmp_path, [
        "compress", "--model", str(setup / "tiny"), "--method", "sparsegpt:sparsity=0.5", "--calib-samples", "6",
        "--calib-len", "16", "--device", "cpu"])
    assert ref == resumed


@pytest.mark.slow
def test_apply_of_a_mixed_plan_killed_after_a_layer_resumes_bit_identical(setup, tmp_path):
    from transformers import AutoConfig

    from prunelens.model.loading import config_hash
    from prunelens.plan.document import Plan, PlanUnit

    units = [("L0.attn", "wanda:sparsity=0.5"), ("L0.mlp", "sparsegpt:sparsity=0.5"), ("L1.attn", "drop"),
             ("L2", "sparsegpt:sparsity=0.5"), ("L3.mlp", "wanda:sparsity=0.5")]
    plan = Plan(model_id=str(setup / "tiny"), config_hash=config_hash(AutoConfig.from_pretrained(setup / "tiny")),
                method="mixed", units=[PlanUnit(u, method=m) for u, m in units], temperature=1.0, budget="units=5",
                strategy="hand")
    plan.save(tmp_path / "plan.json")
    ref, resumed = _interrupted_then_resumed(setup, tmp_path, [
        "apply", str(tmp_path / "plan.json"), "--calib-samples", "6", "--calib-len", "16"])
    assert ref == resumed


def test_resume_restores_the_layers_and_the_next_inputs_exactly(tmp_path):
    """In process: a run stopped after layer 1 and continued equals one run (weights and summary rows)."""
    import torch
    from test_methods_compress import CALIB, loaded_of

    from prunelens.compression.methods import parse_method
    from prunelens.compression.resume import LayerWork
    from prunelens.compression.sequential import compress_model

    method = parse_method("sparsegpt:sparsity=0.5")
    ref = make_tiny_model("llama", layers=4)
    compress_model(loaded_of(ref), method, calib_ids=CALIB, progress=False, batch_size=4)

    class Stop(Exception):
        pass

    work = LayerWork.open(tmp_path / "w", {"run": 1})
    save = work.save

    def save_then_stop(i, *a, **k):
        save(i, *a, **k)
        if i == 1:
            raise Stop

    work.save = save_then_stop  # type: ignore[method-assign]
    with pytest.raises(Stop):
        compress_model(loaded_of(make_tiny_model("llama", layers=4)), method, calib_ids=CALIB, progress=False,
                       batch_size=4, work=work)
    again = LayerWork.open(tmp_path / "w", {"run": 1})
    assert again.done == 1 and len(again.hidden("cpu")) == 2  # 6 samples in batches of 4
    fresh = make_tiny_model("llama", layers=4)  # dense weights: layers 0-1 come from the work folder
    summary = compress_model(loaded_of(fresh), method, calib_ids=CALIB, progress=False, batch_size=4, work=again)
    for (name, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["layer"] for r in summary["layers"]] == [0, 1, 2, 3]
    assert summary["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_a_work_folder_of_another_run_or_not_ours_is_refused(tmp_path):
    from prunelens.compression.resume import LayerWork, work_dir_for
    from prunelens.errors import PrunelensError

    assert work_dir_for(tmp_path / "out") == tmp_path / "out.partial"
    LayerWork.open(tmp_path / "out.partial", {"method": "wanda:sparsity=0.5"})
    with pytest.raises(PrunelensError, match="partial work of a different run"):
        LayerWork.open(tmp_path / "out.partial", {"method": "wanda:sparsity=0.4"})
    (tmp_path / "foreign.partial").mkdir()
    (tmp_path / "foreign.partial" / "keep.txt").write_text("mine")
    with pytest.raises(PrunelensError, match="not a prunelens work folder"):
        LayerWork.open(tmp_path / "foreign.partial", {"method": "wanda"})
    LayerWork.remove_at(tmp_path / "foreign.partial")
    assert (tmp_path / "foreign.partial" / "keep.txt").read_text() == "mine"
    LayerWork.remove_at(tmp_path / "out.partial")
    assert not (tmp_path / "out.partial").exists()


# -- what Ctrl-C says ---------------------------------------------------------------------------
def _interrupt_in(monkeypatch, target: str, name: str) -> None:
    import importlib

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(target), name, boom)


def test_ctrl_c_claims_resume_only_where_the_command_resumes(setup, tmp_path, monkeypatch):
    from prunelens.cli import main

    _interrupt_in(monkeypatch, "prunelens.plan.ranking", "load_store")
    res = CliRunner().invoke(main, ["rank", str(tmp_path)])
    assert res.exit_code == 130 and res.output.strip() == "Interrupted."
    _interrupt_in(monkeypatch, "prunelens.compression.sequential", "compress_model")
    res = CliRunner().invoke(main, ["compress", "--model", str(setup / "tiny"), "--method", "magnitude",
                                    "--out", str(tmp_path / "m")])
    assert res.exit_code == 130
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Interrupted; rerun the same command to resume after the last finished layer")
    assert str(tmp_path / "m.partial") in last

"""Whole probe runs: store = engine, resume after SIGKILL, two processes (gloo) = one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import make_tiny_model
from probe_helpers import single_thread

from prunelens.compression.methods import parse_method
from prunelens.errors import PrunelensError
from prunelens.model.loading import LoadedModel, config_hash
from prunelens.probe.engine import ProbeEngine, ProbeSettings
from prunelens.probe.prompts import Prompts, load_prompts
from prunelens.probe.run import run_probe
from prunelens.units import select_units
from prunelens_store import open_store

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
VOLATILE_ATTRS = {"created", "seconds_last_run", "world_size"}

SLOW_PLUGIN = '''
import os, time
from contextlib import contextmanager
from prunelens.hookspecs import hookimpl
from prunelens.compression.methods import Method


class SlowScale(Method):
    """Scales a unit's output by 1.5, after sleeping $SLOW_SECONDS (to kill a run mid-way)."""
    name = "slow_scale"

    @contextmanager
    def perturb(self, adapter, unit, stats=None):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
        def hook(_m, _a, out):
            return (out[0] * 1.5,) + tuple(out[1:]) if isinstance(out, tuple) else out * 1.5
        h = adapter.module(unit).register_forward_hook(hook)
        try:
            yield
        finally:
            h.remove()


@hookimpl
def register_methods(register):
    register(SlowScale)
'''


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny llama with a word-level tokenizer, a prompts file (ids, some with candidates), a plugin."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    vocab = {f"w{i}": i for i in range(95)} | {"[UNK]": 95}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="w0")
    model = make_tiny_model("llama", layers=3)
    model.save_pretrained(d / "model")
    fast.save_pretrained(d / "model")
    rng = np.random.default_rng(0)
    rows = [{"ids": rng.integers(2, 95, size=n).tolist(), **({"candidates": ["w3", "w4", "w5"]} if i < 2 else {})}
            for i, n in enumerate([6, 6, 4, 6])]
    (d / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "slow_plugin.py").write_text(SLOW_PLUGIN)
    return d


def loaded_tiny(path):
    from prunelens.model.loading import load_model

    return load_model(str(path))


def test_run_store_equals_engine_and_resume_skips(tiny_dir, tmp_path):
    loaded = loaded_tiny(tiny_dir / "model")
    prompts = load_prompts(tiny_dir / "prompts.jsonl", loaded.tokenizer, prompt_len=8)
    assert prompts.candidates[0] == [3, 4, 5] and prompts.candidates[2] == []
    settings = ProbeSettings(steps=4, temperatures=(0.7, 1.0), batch_size=3)
    methods = [parse_method("drop"), parse_method("wanda:sparsity=0.5")]
    units = select_units("L0,L1.attn,L2.mlp", 3)
    out = tmp_path / "r.zarr"
    measured: list[tuple[str, str]] = []
    attrs = run_probe(loaded, methods, units, prompts, settings, out, progress=False, calib_samples=2, calib_len=16,
                      on_cell=lambda m, u: measured.append((m, u)))
    assert len(measured) == 6 and attrs["complete"]
    ds = open_store(out)
    # a cell in the store equals the engine's direct measurement
    eng = ProbeEngine(loaded.adapter, prompts, settings)
    eng.prepare()
    cell = eng.measure(methods[0], units[1])
    for name, arr in cell.arrays.items():
        np.testing.assert_array_equal(ds[name].sel({"method": "drop", "unit": "L1.attn"}).values, arr.astype(np.float32), err_msg=name)
    np.testing.assert_array_equal(ds["free_tokens"].sel({"method": "drop", "unit": "L1.attn"}).values, cell.free_tokens)
    # candidates: samples 0-1 have them, 2-3 do not
    assert np.isfinite(ds["cand_kl"].values[..., :2, :]).all() and np.isnan(ds["cand_kl"].values[..., 2:, :]).all()
    assert ds["tokens"].shape == (4, 6 + 4) and list(ds["prompt_len"].values) == [6, 6, 4, 6]
    assert (ds["tokens"].values[2, :2] == -1).all()  # the short prompt is left-padded with -1
    assert json.loads(ds.attrs["spearman_kl_pred_vs_kl"])["drop"]["local"]["teacher_forced"]["1"] is not None
    assert ds.attrs["model_id"] == str(tiny_dir / "model") and ds.attrs["readout"] == "norm"
    assert json.loads(ds.attrs["methods"])[methods[1].spec]["sparsity"] == 0.5
    # the same run again resumes: nothing is measured twice
    measured.clear()
    run_probe(loaded, methods, units, prompts, settings, out, progress=False, calib_samples=2, calib_len=16,
              on_cell=lambda m, u: measured.append((m, u)))
    assert measured == []
    with pytest.raises(PrunelensError, match="temperatures"):
        run_probe(loaded, methods, units, prompts, ProbeSettings(steps=4, temperatures=(1.0,)), out, progress=False)


def test_method_that_cannot_act_on_a_kind_is_a_clear_error(tmp_path):
    model = make_tiny_model("llama", layers=2)
    from prunelens.model.adapters import get_adapter

    loaded = LoadedModel(model, None, get_adapter(model), "tiny", config_hash(model.config))

    class AttnOnly(type(parse_method("drop"))):
        unit_kinds = ("attn",)

    with pytest.raises(PrunelensError, match="cannot act on block units"):
        run_probe(loaded, [AttnOnly()], select_units("L0", 2), Prompts([[3, 4, 5]]), ProbeSettings(steps=2), tmp_path / "x.zarr")


def _cli(tiny_dir: Path, out: Path, *extra: str, env_extra: dict | None = None, launcher: list[str] | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PRUNELENS_LOAD_PLUGINS="", HF_HUB_OFFLINE="1", PRUNELENS_NO_PROGRESS="1",
               **(env_extra or {}))
    cmd = (launcher or [sys.executable, "-m"]) + ["prunelens", "--plugin", str(tiny_dir / "slow_plugin.py"), "probe",
           "--model", str(tiny_dir / "model"), "--method", "slow_scale", "--method", "drop", "--units", "all",
           "--prompts", str(tiny_dir / "prompts.jsonl"), "--steps", "5", "--prompt-len", "8", "--temperature", "0.7,1",
           "--batch-size", "2", "--out", str(out), "--quiet", *extra]
    return cmd, env


def assert_same_store(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names = sorted(k for k, _ in ga.arrays())
    assert names == sorted(k for k, _ in gb.arrays())
    for name in names:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)  # NaNs compare equal
    attrs_a = {k: v for k, v in ga.attrs.items() if k not in VOLATILE_ATTRS}
    attrs_b = {k: v for k, v in gb.attrs.items() if k not in VOLATILE_ATTRS}
    assert attrs_a == attrs_b


@pytest.fixture(scope="module")
def reference_store(tiny_dir, tmp_path_factory):
    """One uninterrupted single-process CLI run (shared by the resume and the distributed tests)."""
    ref = tmp_path_factory.mktemp("ref") / "ref.zarr"
    cmd, env = _cli(tiny_dir, ref)
    subprocess.run(cmd, env=env, check=True, timeout=300)
    return ref


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tiny_dir, reference_store, tmp_path):
    ref, run = reference_store, tmp_path / "run.zarr"
    cmd, env = _cli(tiny_dir, run, env_extra={"SLOW_SECONDS": "0.3"})
    proc = subprocess.Popen(cmd, env=env)
    total = 2 * 9
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        chunks = list((run / "done" / "c").glob("*/*")) if (run / "done" / "c").exists() else []
        if len(chunks) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = zarr.open_group(str(run), mode="r")["done"][:]
    assert 0 < done.sum() < total
    with pytest.raises(PrunelensError, match="half-written"):
        open_store(run)
    cmd, env = _cli(tiny_dir, run)
    subprocess.run(cmd, env=env, check=True, timeout=300)
    assert_same_store(ref, run)


@pytest.mark.slow
def test_two_processes_gloo_equal_one_process(tiny_dir, reference_store, tmp_path):
    one, two = reference_store, tmp_path / "two.zarr"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd, env = _cli(tiny_dir, two, launcher=torchrun)
    res = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_store(one, two)
    assert zarr.open_group(str(two), mode="r").attrs["world_size"] == 2


@pytest.mark.parametrize("args,message", [
    (["--locality", "nearby"], "locality must be a list of distinct values from local, propagated"),
    (["--temperature", "0.7,hot"], "--temperature must be numbers"),
    (["--temperature", "0"], "temperatures must be positive"),
    (["--method", "nosuch"], "unknown method 'nosuch'"),
])
def test_cli_user_errors_are_one_line(args, message, tmp_path):
    from click.testing import CliRunner

    from prunelens.cli import main

    base = ["probe", "--model", "none", "--method", "drop", "--out", str(tmp_path / "x.zarr")]
    res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output

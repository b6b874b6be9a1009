"""``--dry-run``: the estimate reads only the config, and its terms match what a run allocates."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_model, tiny_config

from prunelens.cli import main
from prunelens.compression.calibration import LayerwiseStats
from prunelens.compression.methods import parse_method
from prunelens.model.adapters import get_adapter
from prunelens.model.cost_estimate import DEVICE_CLASSES, estimate_probe
from prunelens.units import select_units

PROBE = ["probe", "--method", "drop", "--method", "wanda", "--method", "sparsegpt", "--units", "mlp", "--samples", "2",
         "--steps", "3", "--dtype", "bfloat16", "--dry-run", "--json"]


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    """A model directory with a config and no weights at all."""
    d = tmp_path_factory.mktemp("config_only")
    tiny_config("llama", layers=3).save_pretrained(d)
    return d


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_probe_dry_run_needs_no_weights_and_prints_one_object(config_only, tmp_path):
    out = tmp_path / "never.zarr"
    res = _invoke([*PROBE, "--model", config_only, "--out", out, "--device-class", "cpu"])
    assert res.exit_code == 0, res.output
    est = json.loads(res.output)
    assert set(est["peak_bytes"]) == {"cpu"} and est["seconds"] > 0 and not out.exists()
    params = sum(p.numel() for p in make_tiny_model("llama", layers=3).parameters())  # untied: every tensor once
    assert est["parts"]["weights"] == params * 2  # bfloat16
    assert est["peak_bytes"]["cpu"] == sum(est["parts"].values())
    gpu = json.loads(_invoke([*PROBE, "--model", config_only, "--out", out, "--device-class", "h100"]).output)
    assert set(gpu["peak_bytes"]) == {"cuda:0"} and gpu["seconds"] < est["seconds"]
    text = _invoke([*PROBE[:-1], "--model", config_only, "--out", out, "--device-class", "a100"])
    assert text.exit_code == 0 and "peak cuda:0:" in text.output and "time on a100" in text.output


def test_compress_dry_run(config_only, tmp_path):
    out = tmp_path / "ckpt"
    res = _invoke(["compress", "--model", config_only, "--method", "sparsegpt", "--out", out, "--dry-run", "--json",
                   "--device-class", "cpu"])
    assert res.exit_code == 0, res.output
    est = json.loads(res.output)
    cfg = tiny_config("llama", layers=3)
    d, inter = cfg.hidden_size, cfg.intermediate_size
    assert est["parts"]["layer statistics"] == 4 * (2 * d * d + d * d + inter * inter)  # qkv, o, gate/up, down
    assert est["seconds"] > 0 and not out.exists()


def test_statistics_term_equals_the_live_statistics(tmp_path):
    """The estimate's one-layer statistics = the bytes LayerwiseStats really holds for a layer (both kinds)."""
    model = make_tiny_model("llama", layers=3)
    model.save_pretrained(tmp_path / "m")
    methods = [parse_method("wanda"), parse_method("sparsegpt")]
    est = estimate_probe(str(tmp_path / "m"), methods, "L1", "float32", "cpu", samples=1, steps=2, prompt_len=4,
                         temperatures=1, localities=2, timings=["teacher_forced"], batch_size=1, calib_samples=2,
                         calib_len=8)
    lw = LayerwiseStats(get_adapter(model), select_units("L1", 3), torch.randint(0, 96, (2, 8)))
    lw.get(1, "hessian")
    lw.get(1, "input_norms")
    assert est.parts["layer statistics"] == lw.held_bytes() > 0


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model-dir"], "not found"),
    (["--device-class", "tpu"], "tpu"),
])
def test_dry_run_errors_are_one_line(config_only, tmp_path, args, message):
    base = {"--model": str(config_only), "--device-class": "cpu"}
    base.update(dict(zip(args[::2], args[1::2])))
    res = _invoke([*PROBE, "--out", tmp_path / "x.zarr", *[x for kv in base.items() for x in kv]])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert [line.startswith("Error") for line in res.output.splitlines()].count(True) == 1


def test_device_classes_are_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "scale.md").read_text()
    for name in DEVICE_CLASSES:
        assert f"`{name}`" in doc


@pytest.mark.parametrize("script", ["scale.py", "real_1p5b.py"])
def test_scale_bench_scripts_parse(script):
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / script
    proc = subprocess.run([sys.executable, str(bench), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr


def test_tied_head_counts_once(tmp_path):
    cfg = tiny_config("gpt2", layers=2)
    assert cfg.tie_word_embeddings
    cfg.save_pretrained(tmp_path)
    est = estimate_probe(str(tmp_path), [parse_method("drop")], "L1", "float32", "cpu", samples=1, steps=2,
                         prompt_len=4, temperatures=1, localities=1, timings=["teacher_forced"], batch_size=1,
                         calib_samples=1, calib_len=4)
    model = make_tiny_model("gpt2", layers=2)
    assert est.parts["weights"] == 4 * sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once

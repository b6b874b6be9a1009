"""--device auto (the default): CUDA when available, else CPU, stated in the probe's first line; plan --help
points only at options that exist."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from rank_helpers import save_tiny

from prunelens.cli import main
from prunelens.model.devices import resolve_device


@pytest.mark.parametrize("cuda,want", [(True, "cuda"), (False, "cpu")])
def test_auto_picks_cuda_when_available(monkeypatch, cuda, want):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    device, why = resolve_device("auto")
    assert device == want and why.startswith("auto:")
    assert resolve_device("cuda:1") == ("cuda:1", "as asked")
    assert resolve_device("map")[0] == "auto"  # load_model's accelerate device_map


def test_device_defaults_are_auto():
    import click

    ctx = click.Context(main)
    for cmd in ("probe", "eval", "compress"):
        (device,) = [p for p in main.get_command(ctx, cmd).params if p.name == "device"]
        assert device.default == "auto"


def test_probe_states_the_device_first(tmp_path):
    model = save_tiny(tmp_path / "tiny", layers=2)
    res = CliRunner().invoke(main, ["probe", "--model", str(model), "--method", "drop", "--units", "L0",
                                    "--samples", "1", "--steps", "1", "--prompt-len", "4", "--temperature", "1.0",
                                    "--timing", "teacher_forced", "--out", str(tmp_path / "p.zarr")])
    assert res.exit_code == 0, res.output
    import torch

    where = "cuda (auto: CUDA is available)" if torch.cuda.is_available() else "cpu (auto: no CUDA device)"
    assert res.stderr.splitlines()[0] == f"probe: {model} on {where}, dtype float32"


def test_plan_help_points_at_existing_options():
    res = CliRunner().invoke(main, ["plan", "--help"])
    import re

    text = re.sub(r"\s+", " ", res.output)

    import click

    plan_opts = {o for p in main.get_command(click.Context(main), "plan").params for o in p.opts}
    for opt in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text):
        mentioned = text[max(0, text.index(opt) - 20):text.index(opt)]
        assert opt in plan_opts or "rank" in mentioned or opt in ("--help",), opt

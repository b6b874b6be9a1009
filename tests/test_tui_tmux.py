"""A real terminal: tmux runs ``python -m prunelens_tui`` at 80x24; keys go in, the screen is read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from prunelens_tui.synthetic import make_store

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")


class Tmux:
    """One private tmux server (its own socket) running one 80x24 session."""

    def __init__(self, command: str, cwd) -> None:
        self.socket = f"prunelens-tui-{uuid.uuid4().hex[:8]}"
        self.run("new-session", "-d", "-s", "t", "-x", "80", "-y", "24", "-c", str(cwd), command)

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def wait_for(self, *texts: str, timeout: float = 30.0, settled=None) -> str:
        """The first screen that shows every text (and passes ``settled``, when given: a screen caught
        mid-redraw can show the new texts before every line is drawn)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if all(t in screen for t in texts) and (settled is None or settled(screen)):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {texts!r}; the screen:\n{screen}")
            time.sleep(0.25)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def test_launch_heatmap_export_and_quit(tmp_path):
    make_store(tmp_path / "run.zarr", methods=("drop",), num_layers=4, samples=2, steps=6, temperatures=(0.7, 1.0))
    env = "env PRUNELENS_LOAD_PLUGINS= HF_HUB_OFFLINE=1 TERM=xterm-256color"
    tmux = Tmux(f"{env} {sys.executable} -m prunelens_tui run.zarr; echo TUI-EXIT=$?; sleep 120", tmp_path)
    try:
        tmux.wait_for("run.zarr", "complete", "tiny-llama-synthetic", timeout=60)
        tmux.keys("2")
        screen = tmux.wait_for("kl_pred T=1", "L3.mlp", "mean of 2 samples")
        assert "step" in screen and ("▁" in screen or "█" in screen)
        tmux.keys("v")
        tmux.wait_for("kl T=1 ·")
        tmux.keys("k")  # kind all -> block: the plan screen follows it
        tmux.wait_for("k block")
        tmux.keys("5")
        tmux.wait_for("Export", "plan.json", "kl_pred", "r ranks", timeout=60)
        tmux.keys("r")
        tmux.wait_for("✓ plan", timeout=60)
        tmux.keys("e")
        tmux.wait_for("wrote plan.json")
        plan = json.loads((tmp_path / "plan.json").read_text())
        assert plan["strategy"] == "kl_pred" and len(plan["units"]) == 2
        assert (tmp_path / "plan.yaml").read_text().count("layer_range") >= 1  # block drops: mergekit too
        tmux.keys("q")
        tmux.wait_for("TUI-EXIT=0")
        assert "Traceback" not in tmux.screen()
    finally:
        tmux.close()


@pytest.mark.parametrize("mono", [False, True], ids=["colour", "mono"])
def test_plan_screen_after_a_method_switch(tmp_path, mono):
    """``m`` on the heatmap, then the plan screen: its method box, status line and exported plan name the
    method switched to. ``TUI_SCREENSHOTS=DIR`` keeps the captured screens (docs/tui.md shows them)."""
    make_store(tmp_path / "run.zarr", methods=("drop", "magnitude:sparsity=0.3", "magnitude:sparsity=0.5"),
               num_layers=4, samples=2, steps=6, temperatures=(0.7, 1.0), candidates=False)
    env = "env PRUNELENS_LOAD_PLUGINS= HF_HUB_OFFLINE=1 TERM=xterm-256color" + (" NO_COLOR=1" if mono else "")
    tmux = Tmux(f"{env} {sys.executable} -m prunelens_tui run.zarr; echo TUI-EXIT=$?; sleep 120", tmp_path)
    try:
        tmux.wait_for("run.zarr", "complete", timeout=60)
        tmux.keys("2")
        tmux.wait_for("kl_pred T=1", "mean of 2 samples")
        tmux.keys("m", "m", "k")  # drop -> magnitude:sparsity=0.3 -> 0.5; kind all -> block
        def bar_on_one_line(screen: str) -> bool:  # the selection bar: one line, ending with the kind
            return screen.splitlines()[1].rstrip().endswith("k block")

        # the heatmap's title names the method switched to; a bar that wraps times out here and fails
        heatmap = tmux.wait_for("magnitude:sparsity=0.5 ·", "k block", settled=bar_on_one_line)
        tmux.keys("5")
        tmux.wait_for("magnitude:sparsity=0.5 · kl_pred · block", "r ranks", timeout=60)
        tmux.keys("r")
        plan_screen = tmux.wait_for("✓ plan", timeout=60)
        tmux.keys("e")
        exported = tmux.wait_for("wrote plan.json")
        assert plan_screen.count("magnitude:sparsity=0.5") >= 2  # the method box and the status line
        assert "magnitude:sparsity=0.5" in exported
        plan = json.loads((tmp_path / "plan.json").read_text())
        assert plan["method"] == "magnitude:sparsity=0.5" and plan["kind"] == "block"
        keep = os.environ.get("TUI_SCREENSHOTS")
        if keep:
            name = "mono" if mono else "colour"
            (Path(keep) / f"heatmap-{name}.txt").write_text(heatmap)
            (Path(keep) / f"plan-{name}.txt").write_text(plan_screen)
        tmux.keys("q")
        tmux.wait_for("TUI-EXIT=0")
    finally:
        tmux.close()

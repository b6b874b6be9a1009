"""The bench scripts at least parse: gpu_check.sh (bash -n) and the Python benches (--help)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", ["probe_whole.py", "sparsegpt_ref.py", "evopress_compare.py", "rss_stages.py"])
def test_bench_help(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr


def test_run_measured_reports_the_commands_peak_not_the_callers():
    """A caller that once held 400 MB measures a child that holds 64 MB: the peak is the child's (>= 64 MB, well
    under 400 MB). An exec'd child started straight from the caller reports at least the caller's 400 MB."""
    script = f"""
import sys
sys.path.insert(0, {str(BENCH)!r})
from peak import run_measured
big = b"x" * (400 << 20)
del big
child = "import sys; a = b'y' * (64 << 20); sys.exit(3)"
m = run_measured([sys.executable, "-c", child], lock=False)
print(m.returncode, m.peak_bytes)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    code, peak = map(int, proc.stdout.split())
    assert code == 3
    assert (64 << 20) <= peak < (200 << 20), peak


def test_allocation_agreement_cis_match_a_normal_interval_and_pair_prompts(monkeypatch):
    """bench/allocation.py's bootstrap CI of a mean against the normal interval (64 values), and its paired
    difference to the budget's uniform plan computed prompt by prompt."""
    import numpy as np

    monkeypatch.syspath_prepend(str(BENCH))
    import allocation as A

    v = np.random.default_rng(1).random(64)
    lo, hi = A.bootstrap_ci(list(v))
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v))
    assert abs(lo - (v.mean() - half)) < 0.01 and abs(hi - (v.mean() + half)) < 0.01
    res = {"conditions": {"w30-uniform": {"agree_per_prompt": [0.5, 1.0], "first_div_per_prompt": [3, 32]},
                          "w30-knapsack": {"agree_per_prompt": [1.0, 1.0], "first_div_per_prompt": [32, 32]}}}
    rows = A.agreement_table(res)
    assert rows[-1].startswith("| w30-knapsack | 1.000 [1.000, 1.000] | 32.000")
    assert "+0.250 [+0.000, +0.500]" in rows[-1] and "+14.500 [+0.000, +29.000]" in rows[-1]


def test_allocation_window_ppl_ratio_against_direct_computation(monkeypatch):
    """bench/allocation.py's paired perplexity ratio over windows: the point value is the ratio of the two
    perplexities computed directly, the interval is the normal interval of the paired NLL differences
    (exponentiated), and each row is paired with its own budget's knapsack and uniform plans."""
    import math

    import numpy as np

    monkeypatch.syspath_prepend(str(BENCH))
    import allocation as A

    rng = np.random.default_rng(2)
    b = rng.normal(3.0, 0.3, 64)
    a = b + rng.normal(-0.1, 0.05, 64)  # a is about 10 % better, window by window
    ratio, lo, hi = A.paired_ppl_ratio(list(a), list(b))
    assert abs(ratio - math.exp(a.mean()) / math.exp(b.mean())) < 1e-12
    d = a - b
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert abs(math.log(lo) - (d.mean() - half)) < 0.003 and abs(math.log(hi) - (d.mean() + half)) < 0.003
    rows = {n: {} for n in ("wanda60-uniform", "wanda60-knapsack", "wanda60-search", "rtn-knapsack3.5",
                            "rtn-search3.5", "rtn-uniform4")}
    assert A.budget_reference("wanda60-search", rows, "knapsack") == "wanda60-knapsack"
    assert A.budget_reference("wanda60-search", rows, "uniform") == "wanda60-uniform"
    assert A.budget_reference("rtn-search3.5", rows, "knapsack") == "rtn-knapsack3.5"
    assert A.budget_reference("rtn-search3.5", rows, "uniform") is None  # no uniform plan at 3.5 bits
    assert A.budget_reference("wanda60-knapsack", rows, "knapsack") is None  # not paired with itself

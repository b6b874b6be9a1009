"""Peak memory of the metric pass when every row takes the direct (large-perturbation) path.

    python bench/metrics_rss.py      # 1024 rows x 49152 vocabulary (a 16 x 64 probe's rows), float32

Prints how much the process's peak RSS grew during one ``row_metrics`` call (inputs excluded).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from prunelens.probe.metrics import row_metrics  # noqa: E402


def hwm() -> float:
    return [int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0]


torch.manual_seed(0)
R, V = 1024, 49152
z = 3 * torch.randn(R, V)
z2 = z + 40 * torch.randn(R, V)  # every row large: all recomputed directly
h = torch.randn(R, 576)
base = hwm()
m = row_metrics(h, 0.1 * h, z, z2, [1.0])
print(f"inputs {2 * R * V * 4 / 2**20:.0f} MiB; peak grew by {hwm() - base:.0f} MiB during row_metrics "
      f"(all {R} rows direct); kl finite {bool(torch.isfinite(m.kl).all())}")

#!/usr/bin/env bash
# GPU readiness check for the probe. One short script:
#   bash bench/gpu_check.sh            # on a CUDA machine: cuda fp32, cuda bf16, --device auto, vs a CPU fp32 store
#   GPU_CHECK_FORCE_CPU=1 bash bench/gpu_check.sh   # the CPU fallback (what runs when no GPU is visible)
# Environment: GPU_CHECK_UNITS (default attn,mlp), GPU_CHECK_SAMPLES (8), GPU_CHECK_STEPS (32),
#   GPU_CHECK_OUT (a fresh temp dir), PYTHON (default .venv/bin/python if present, else python3).
# Checks: the cuda float32 store equals the CPU float32 store to 1e-4 relative (+1e-7 absolute) on
# kl, kl_pred, cos_dev, rel_norm; the bf16 store agrees per unit with the fp32 one to BF16_RTOL (0.25,
# median over units of the relative difference of mean KL) with Spearman >= 0.9 across units (>= 5 units).
# Prints cells/s, tokens/s and peak GPU memory per run. Exit status 0 = all checks passed.
# Several devices and Hessians: --device map (over every visible GPU; with 2 or more, --max-memory puts the first
# layers on cuda:0 and the rest with the head on cuda:1) and torchrun with 2 ranks (each rank on its LOCAL_RANK's
# GPU) equal the CPU float32 store to 1e-4; sparsegpt on the GPU agrees with sparsegpt on the CPU to 1e-2 (median
# over units of the relative difference of mean KL: Cholesky and matmul orders differ between devices); with a
# GPU, the Llama-3-8B shape twin (bench/scale.py builds it) is probed in bf16 with drop and sparsegpt on its MLPs.
# The CPU fallback runs the map, torchrun and sparsegpt checks on the CPU and says that it skips the twin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
UNITS=${GPU_CHECK_UNITS:-attn,mlp}
SAMPLES=${GPU_CHECK_SAMPLES:-8}
STEPS=${GPU_CHECK_STEPS:-32}
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
export PRUNELENS_LOAD_PLUGINS= PRUNELENS_NO_PROGRESS=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [ "${GPU_CHECK_FORCE_CPU:-0}" = "1" ]; then HAS_CUDA=0
else HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))'); fi
if [ "$HAS_CUDA" = "1" ]; then
  "$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| cuda", torch.version.cuda)'
  GPU=cuda
else
  echo "no CUDA device visible: CPU fallback (the same runs and checks with --device cpu in place of cuda)"
  GPU=cpu
fi

# run NAME DEVICE DTYPE : one probe run in a fresh process; prints throughput and peak accelerator memory
run() {
  local name=$1 device=$2 dtype=$3
  "$PY" - "$OUT/$name.zarr" "$device" "$dtype" "$UNITS" "$SAMPLES" "$STEPS" <<'EOF'
import json, sys, time
import torch
out, device, dtype, units, samples, steps = sys.argv[1:7]
import prunelens.cli as cli
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
cli.main(["probe", "--model", "smollm2-135m", "--method", "drop", "--units", units, "--samples", samples, "--steps", steps,
          "--temperature", "1.0", "--out", out, "--dtype", dtype, "--device", device, "--quiet"], standalone_mode=False)
wall = time.perf_counter() - t
from prunelens_store import open_store
ds = open_store(out)
cells = int(ds.attrs["cells_done"])
secs = float(ds.attrs.get("seconds_last_run", wall))
tokens = cells * int(samples) * int(steps) * ds.sizes["locality"] * ds.sizes["timing"]
peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
print(f"{out.rsplit('/', 1)[-1]:22s} device={device:5s} dtype={dtype:9s} cells={cells} probe {secs:.1f} s (process {wall:.1f} s): "
      f"{cells / secs:.3g} cells/s, {tokens / secs:.3g} tokens/s, peak GPU memory {peak:.0f} MiB", flush=True)
EOF
}

# run_with NAME METHOD UNITS DEVICE DTYPE [launcher...] : one probe run; EXTRA (probe options) and MODEL from the
# environment; with a launcher (torchrun ...) the probe runs under it
run_with() {
  local name=$1 method=$2 units=$3 device=$4 dtype=$5
  shift 5
  local t0=$SECONDS
  # shellcheck disable=SC2086
  "$@" "$PY" -m prunelens probe --model "${MODEL:-smollm2-135m}" --method "$method" --units "$units" \
    --samples "$SAMPLES" --steps "$STEPS" --temperature 1.0 --calib-samples 4 --calib-len 64 \
    --out "$OUT/$name.zarr" --dtype "$dtype" --device "$device" --quiet ${EXTRA:-}
  echo "$name: device=$device dtype=$dtype method=$method $((SECONDS - t0)) s"
}

# compare A B MODE : fp32 (exact to 1e-4) or bf16 (stated tolerance)
compare() {
  "$PY" - "$OUT/$1.zarr" "$OUT/$2.zarr" "$3" <<'EOF'
import sys
import numpy as np
from scipy.stats import spearmanr
from prunelens_store import open_store
a, b, mode = open_store(sys.argv[1]), open_store(sys.argv[2]), sys.argv[3]
ok = True
if mode == "fp32":
    for v in ("kl", "kl_pred", "cos_dev", "rel_norm"):
        x, y = a[v].values.astype(np.float64), b[v].values.astype(np.float64)
        fin = np.isfinite(x) & np.isfinite(y)
        err = np.abs(x - y)[fin] - (1e-4 * np.abs(y) + 1e-7)[fin]
        worst = float(np.max(np.abs(x - y)[fin] / (np.abs(y)[fin] + 1e-7)))
        good = bool((err <= 0).all()) and bool((np.isfinite(x) == np.isfinite(y)).all())
        ok &= good
        print(f"  {v:9s} max relative difference {worst:.2e}  {'ok' if good else 'FAIL'} (<= 1e-4 + 1e-7 abs)")
else:
    BF16_RTOL = 0.25
    x = a["kl"].mean(dim=("sample", "step")).values.reshape(a.sizes["method"] * a.sizes["unit"], -1)
    y = b["kl"].mean(dim=("sample", "step")).values.reshape(x.shape)
    rel = np.abs(x - y) / np.maximum(np.abs(y), 1e-9)
    med = float(np.nanmedian(rel))
    if x.shape[0] >= 5:  # a rank correlation of fewer units says nothing
        rho = min(float(spearmanr(x[:, j], y[:, j]).statistic) for j in range(x.shape[1]))
        rank = f"min Spearman across units {rho:.3f} (>= 0.9)"
    else:
        rho, rank = 1.0, f"Spearman not checked ({x.shape[0]} units < 5)"
    tol = 1e-2 if mode == "hessian" else BF16_RTOL
    ok = med <= tol and rho >= 0.9
    print(f"  {mode} vs reference: median relative difference of per-unit mean KL {med:.3g} (<= {tol}), "
          f"{rank}  {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
EOF
}

status=0
run ref-cpu-fp32 cpu float32
run "$GPU-fp32" "$GPU" float32
run "$GPU-bf16" "$GPU" bfloat16
run auto-fp32 auto float32
echo "check: $GPU float32 store vs CPU float32 store"; compare "$GPU-fp32" ref-cpu-fp32 fp32 || status=1
echo "check: --device auto float32 store vs CPU float32 store"; compare auto-fp32 ref-cpu-fp32 fp32 || status=1
echo "check: $GPU bfloat16 store vs $GPU float32 store"; compare "$GPU-bf16" "$GPU-fp32" bf16 || status=1

NGPU=0
[ "$HAS_CUDA" = "1" ] && NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
MAP_EXTRA=""
[ "$NGPU" -ge 2 ] && MAP_EXTRA="--max-memory 0=300MiB,1=8GiB"  # layers split over cuda:0 and cuda:1, head on 1
EXTRA=$MAP_EXTRA run_with map-fp32 drop "$UNITS" map float32
echo "check: --device map ($NGPU GPUs) float32 store vs CPU float32 store"; compare map-fp32 ref-cpu-fp32 fp32 || status=1
TORCHRUN=$(command -v torchrun || echo "$(dirname "$PY")/torchrun")
run_with torchrun2-fp32 drop "$UNITS" "$GPU" float32 "$TORCHRUN" --standalone --nproc_per_node 2 --no-python
echo "check: torchrun 2 ranks ($GPU) float32 store vs CPU float32 store"; compare torchrun2-fp32 ref-cpu-fp32 fp32 || status=1
HUNITS=${GPU_CHECK_HESSIAN_UNITS:-L2-7.mlp}
run_with sgpt-cpu sparsegpt:sparsity=0.5 "$HUNITS" cpu float32
if [ "$HAS_CUDA" = "1" ]; then
  run_with sgpt-cuda sparsegpt:sparsity=0.5 "$HUNITS" cuda float32
  echo "check: sparsegpt on cuda vs on the CPU (float32)"; compare sgpt-cuda sgpt-cpu hessian || status=1
else
  run_with sgpt-map sparsegpt:sparsity=0.5 "$HUNITS" map float32
  echo "check: sparsegpt with --device map vs plain (CPU, float32)"; compare sgpt-map sgpt-cpu hessian || status=1
fi
if [ "$HAS_CUDA" = "1" ] && [ -f bench/scale.py ]; then
  TWIN=$("$PY" -c 'import sys; from pathlib import Path; sys.path.insert(0, "bench"); from scale import build_twin
print(build_twin("8b", Path(sys.argv[1])))' "${GPU_CHECK_TWIN_ROOT:-/tmp/prunelens-twins}")
  for m in drop sparsegpt:sparsity=0.5; do
    MODEL=$TWIN EXTRA="--locality local,propagated" run_with "twin8b-${m%%:*}" "$m" mlp cuda bfloat16 || status=1
  done
else
  echo "Llama-3-8B twin: skipped (it needs a CUDA device here; on a CPU, bench/scale.py probes it)"
fi
[ -z "${GPU_CHECK_OUT:-}" ] && rm -rf "$OUT"
echo "gpu_check: $([ $status = 0 ] && echo all checks passed || echo SOME CHECKS FAILED) (device $GPU)"
exit $status

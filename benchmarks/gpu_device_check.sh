#!/usr/bin/env bash
# The GPU checks of issues 11, 13 and 23 in ONE device call (../shared/gpu/README.md says how the machine is used).
#
# Staging, here first (the working tree itself travels with every call, ~22 MB, and a call carries at most 64 MiB,
# so onnxruntime-gpu's CUDA provider (~186 MB xz) goes in parts of 43 MB, one per call):
#   bash ../shared/gpu/stage_ort_gpu.sh
#   cd .gpu && cat cuda.so.xz.part? > /tmp/c.xz && rm cuda.so.xz.part? && split -b 43000000 -d -a 1 /tmp/c.xz cuda.so.xz.part
#   rm whl/inclust_plus-*.whl; mkdir -p data && cp ../../shared/data/merfish_scrna_reference.h5ad data/   (the tree runs as is)
# then, back to back (the machine goes back after 30 s idle): run(command="bash .gpu/assemble.sh",
#   carry=[".gpu/cuda.so.xz.partN", ".gpu/cuda.sha", ".gpu/assemble.sh"]) for N = 0..3, and the measuring call:
#   run(command="bash .gpu/assemble.sh final && bash benchmarks/gpu_device_check.sh", timeout_s=580,
#       carry=[".gpu/cuda.so.xz.part4", ".gpu/cuda.sha", ".gpu/ort_rest.tar.xz", ".gpu/whl", ".gpu/assemble.sh", ".gpu/data"])
# and give_back. Every step has its own time limit and is guarded (a failure is logged, the next step runs); the
# steps together stay under 560 s. Everything lands in $OUT (at most 8 files come back, so the logs go into one):
#   env.txt (GPU, providers), log.txt (every step's output), gpu.json (benchmarks/gpu.py --device cuda: feeds,
#   precision, 200k x 20,000 @5% end to end), training_device.json (issue 13: the imputation preset on CUDA; a
#   CITE-seq-sized network on CPU and CUDA), training_compile.json (issue 23: torch.compile of the one loss on CUDA).
# Here afterwards: copy the JSON files into benchmarks/results/ and run benchmarks/report.py.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
DATA=.gpu/data/merfish_scrna_reference.h5ad
# The tree is not pip-installed there: lay the package out as installed (pyproject's package-dir maps
# training/, export/ and runtime/ into inclust_plus), with links into this checkout.
PKG=$(mktemp -d)/site
mkdir -p "$PKG/inclust_plus"
ln -s "$PWD"/inclust_plus/* "$PKG/inclust_plus/"
for sub in training export runtime; do ln -s "$PWD/$sub" "$PKG/inclust_plus/$sub"; done
export PYTHONPATH=$HOME/gpu-stage/ort:$HOME/gpu-stage/site:$PKG:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=python3
LOG="$OUT/log.txt"
{
  date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv 2>&1
  $PY -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__, torch.cuda.is_available())" 2>&1
  for m in torch onnx anndata h5py scipy click tqdm pytest sklearn inclust_plus.runtime inclust_plus.export inclust_plus.training.model; do
    $PY -c "import $m" 2>/dev/null || echo "missing module: $m"
  done
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: run one guarded step, its output appended to the one log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s) $(date -u +%T)" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc $rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

# 1. CUDA parity tests: fp32 CUDA within the CPU parity bound, dense and CSR, end to end (tests/test_runtime_cuda.py).
step cuda_tests 75 $PY -m pytest -q -p no:cacheprovider tests/test_runtime_cuda.py
# 2. Issue 11: feeds, precision and the 200k x 20,000 @5% end-to-end run (the acceptance size).
step gpu_py 190 $PY benchmarks/gpu.py --device cuda --reps 1 --sizes 1 --contenders cpu_dense,cuda_auto,cuda_dense,cuda_torchscript --out "$OUT/r1"
cp "$OUT/r1/gpu.json" "$OUT/gpu.json" 2>/dev/null
# 3. Issue 13: the imputation preset (6 members, 200 epochs, real data) on CUDA; a CITE-seq-sized network on CPU and CUDA.
step preset_cuda 110 $PY benchmarks/training_device.py --parts preset --devices cuda --data "$DATA" --out "$OUT/t13p"
step citeseq 80 $PY benchmarks/training_device.py --parts citeseq --devices cpu cuda --out "$OUT/t13c"
$PY - "$OUT" <<'EOF' >> "$LOG" 2>&1
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); parts = [out / "t13p" / "training_device.json", out / "t13c" / "training_device.json"]
found = [json.loads(p.read_text()) for p in parts if p.exists()]
if found:
    merged = found[0]
    for other in found[1:]:
        for key in ("preset", "citeseq", "skipped"):
            merged[key] = merged.get(key, []) + other.get(key, [])
    (out / "training_device.json").write_text(json.dumps(merged, indent=1))
EOF
# 4. Issue 23: torch.compile of the one loss definition on CUDA (eager vs compiled, one network and 6 stacked members).
step compile_cuda 90 $PY benchmarks/training_compile.py --devices cuda --cuda-modes default --rounds 5 --data "$DATA" --out "$OUT/tc"
cp "$OUT/tc/training_compile.json" "$OUT/training_compile.json" 2>/dev/null
cp "$OUT/tc/training_compile.md" "$OUT/training_compile.md" 2>/dev/null
rm -rf "$OUT/r1" "$OUT/t13p" "$OUT/t13c" "$OUT/tc"
ls -la "$OUT"

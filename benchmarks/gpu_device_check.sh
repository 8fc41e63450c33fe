#!/usr/bin/env bash
# Issue 11 GPU checks in ONE device call (see ../shared/gpu/README.md; nothing here has been run on a GPU yet).
#
# Here, first:  EXTRA_WHEELS="pytest iniconfig pluggy tqdm h5py click" bash ../shared/gpu/stage_ort_gpu.sh
# then the part calls of README.md step 2, then the measuring call:
#   run(command="bash .gpu/assemble.sh final && bash benchmarks/gpu_device_check.sh", timeout_s=560,
#       carry=[".gpu/cuda.so.xz.part3", ".gpu/cuda.sha", ".gpu/ort_rest.tar.xz", ".gpu/whl", ".gpu/assemble.sh"])
# and give_back. Every step is guarded (a failure is logged, the next step runs); everything lands in $OUT:
#   env.txt (GPU, providers, missing modules), cuda_tests.txt (tests/test_runtime_cuda.py: fp32 CUDA within the
#   CPU parity bound, dense and CSR, end to end), gpu.json + gpu.log (benchmarks/gpu.py --device cuda),
#   t13/training_device.json (issue 13: CITE-seq-sized training rows/s on CPU and CUDA),
#   tc/ and tc_autotune/training_compile.json + .md (torch.compile of the training loss on CUDA vs eager).
# Copy $OUT/gpu.json to benchmarks/results/gpu.json and run benchmarks/report.py to update BENCHMARKS.md.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
# The tree is not pip-installed there: lay the package out as installed (pyproject's package-dir maps
# training/, export/ and runtime/ into inclust_plus), with links into this checkout.
PKG=$(mktemp -d)/site
mkdir -p "$PKG/inclust_plus"
ln -s "$PWD"/inclust_plus/* "$PKG/inclust_plus/"
for sub in training export runtime; do ln -s "$PWD/$sub" "$PKG/inclust_plus/$sub"; done
export PYTHONPATH=$HOME/gpu-stage/ort:$HOME/gpu-stage/site:$PKG:$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=python3
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv 2>&1
  $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1
  for m in torch onnx anndata h5py scipy click tqdm pytest inclust_plus.runtime inclust_plus.export; do
    $PY -c "import $m" 2>/dev/null || echo "missing module: $m"
  done
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. CUDA parity tests (~1 min).
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_runtime_cuda.py > "$OUT/cuda_tests.txt" 2>&1 || echo "cuda tests failed or timed out (rc $?)" >> "$OUT/cuda_tests.txt"
tail -5 "$OUT/cuda_tests.txt"

# 2. Feeds, precision, and the 200k x 20,000 @5% end-to-end run first (the acceptance size), then 1M x 2,000 @10%.
timeout 240 $PY benchmarks/gpu.py --device cuda --reps 1 --sizes 1 --contenders cpu_dense,cuda_auto,cuda_dense,cuda_torchscript \
  --out "$OUT/r1" > "$OUT/gpu.log" 2>&1 || echo "gpu.py (200k x 20,000) failed or timed out (rc $?)" >> "$OUT/gpu.log"
timeout 150 $PY benchmarks/gpu.py --device cuda --skip-feeds --reps 1 --sizes 0 --contenders cpu_dense,cuda_auto --out "$OUT/r0" \
  > "$OUT/gpu_1m.log" 2>&1 || echo "gpu.py (1M x 2,000) failed or timed out (rc $?)" >> "$OUT/gpu_1m.log"
cp "$OUT/r1/gpu.json" "$OUT/gpu.json" 2>/dev/null

# 3. Issue 13: CITE-seq-sized training (100k cells x 20,000 genes + 200 proteins, synthetic) rows/s, CPU vs CUDA.
timeout 150 $PY benchmarks/training_device.py --parts citeseq --devices cpu cuda --out "$OUT/t13" > "$OUT/training_device.log" 2>&1 \
  || echo "training_device.py failed or timed out (rc $?)" >> "$OUT/training_device.log"
tail -3 "$OUT/training_device.log"

# 4. torch.compile of the one loss definition on CUDA (eager vs compiled default and max-autotune-no-cudagraphs; one
#    network and the preset's 6 stacked members, real data when present; benchmarks/training_compile.py).
#    The default mode first; max-autotune (slow to compile) in its own call, so that its time limit cannot cost the first.
timeout 150 $PY benchmarks/training_compile.py --devices cuda --cuda-modes default --rounds 5 --out "$OUT/tc" \
  > "$OUT/training_compile.log" 2>&1 || echo "training_compile.py failed or timed out (rc $?)" >> "$OUT/training_compile.log"
timeout 200 $PY benchmarks/training_compile.py --devices cuda --cuda-modes max-autotune-no-cudagraphs --rounds 5 --out "$OUT/tc_autotune" \
  > "$OUT/training_compile_autotune.log" 2>&1 || echo "training_compile.py (max-autotune) failed or timed out (rc $?)" >> "$OUT/training_compile_autotune.log"
tail -4 "$OUT/training_compile.log" "$OUT/training_compile_autotune.log"
tail -3 "$OUT/gpu.log" "$OUT/gpu_1m.log"
ls -R "$OUT"

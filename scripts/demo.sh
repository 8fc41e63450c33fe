#!/usr/bin/env bash
# The main job on the embedded MERFISH slice: train inClust+ (task a), export the mask-folded
# graphs, impute the 31 genes the query panel lacks with the torch-free runtime, score and plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BIN=.venv/bin
OUT=${OUT:-demo_output}
mkdir -p "$OUT"
$BIN/inclust-train examples/merfish_imputation.toml --out "$OUT/model.pt" --force
$BIN/inclust-export "$OUT/model.pt" --out "$OUT/export" --triton "$OUT/triton_models" --force
$BIN/inclust-run impute --onnx "$OUT/export" --combination merfish_to_rna \
  --input examples/data/merfish_query.h5ad --output "$OUT/merfish_imputed.h5ad" --force
$BIN/python examples/score_imputation.py "$OUT/merfish_imputed.h5ad" \
  examples/data/merfish_query_heldout_truth.h5ad --plot "$OUT/imputed_vs_measured.png"

#!/usr/bin/env bash
# The CUDA checks, as one prepared run on a GPU machine (results under $OUT, default bench/out):
# the tests that need CUDA (with the graph, model and metric tests), one default training run with
# its evaluation on CUDA, and the full benchmark.  Needs Data/ml100k prepared (python prepare_data.py ml100k).
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c 'import torch, torch_geometric; print("torch", torch.__version__, "pyg", torch_geometric.__version__)' | tee -a "$OUT/gpu.txt"
# Warnings are errors in pytest.ini for this project's pinned versions; another torch may warn differently.
$PY -m pytest -q -o filterwarnings=default tests/test_cuda.py tests/test_graph.py tests/test_models.py \
    tests/test_metrics.py 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"
$PY main.py --data_path ml100k --no-progress --save_file "$OUT/cuda_train.jsonl" \
    --checkpoint "$OUT/runs/last.pt" --PATH_weight_save "$OUT/runs/best.pt" 2>&1 | tail -8 | tee "$OUT/cuda_train.txt"
$PY bench/bench.py --out "$OUT" 2>&1 | tee "$OUT/cuda_bench.txt"

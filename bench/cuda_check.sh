#!/usr/bin/env bash
# The CUDA checks, as one prepared run on a GPU machine (results under $OUT, default bench/out):
# the tests that need CUDA (with the graph, model and metric tests, and every registered model moved to the
# GPU by tests/test_devices.py), one default training run with
# its evaluation on CUDA, and the benchmark.  Needs Data/ml100k prepared (python prepare_data.py ml100k).
#
# For a machine lent for a few minutes, the environment trims it:
#   BENCH_ARGS="--only slmrec,mmgcn --no-epochs"   the benchmark's arguments (default: the full benchmark)
#   TRAIN=0                                         no ML-100K training run
#   RESULTS="--dataset ml1m --jobs 6 ..."           bench/results.py runs, started after the benchmark (which
#                                                   needs a quiet GPU) and side by side with the tests; stopped
#   UNTIL=480                                       this many seconds after the start; finished runs' records
#                                                   come back in $OUT/results_runs.tgz (results.py reuses them;
#                                                   packed from bench/out, so leave --out out of RESULTS)
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
START=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c 'import torch, torch_geometric; print("torch", torch.__version__, "pyg", torch_geometric.__version__)' | tee -a "$OUT/gpu.txt"
# shellcheck disable=SC2086
$PY bench/bench.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/cuda_bench.txt"
if [ -n "${RESULTS:-}" ]; then
    left=$(( ${UNTIL:-480} - (SECONDS - START) ))
    echo "results.py for ${left}s: ${RESULTS}"
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 timeout "$left" $PY bench/results.py $RESULTS > "$OUT/results.txt" 2>&1 &
    results_pid=$!
fi
# Warnings are errors in pytest.ini for this project's pinned versions; another torch may warn differently.
$PY -m pytest -q -o filterwarnings=default tests/test_cuda.py tests/test_graph.py tests/test_models.py \
    tests/test_metrics.py 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"
# every registered model moved to the GPU whole (parameters and buffers), scoring as on the CPU, one Adam step
DEVICE=cuda $PY -m pytest -q -o filterwarnings=default tests/test_devices.py 2>&1 | tail -5 | tee "$OUT/cuda_devices.txt"
if [ "${TRAIN:-1}" != 0 ]; then
    $PY main.py --data_path ml100k --no-progress --save_file "$OUT/cuda_train.jsonl" \
        --checkpoint "$OUT/runs/last.pt" --PATH_weight_save "$OUT/runs/best.pt" 2>&1 | tail -8 | tee "$OUT/cuda_train.txt"
fi
if [ -n "${RESULTS:-}" ]; then
    wait "$results_pid"
    echo "results.py exit $? after $((SECONDS - START))s"
    tail -25 "$OUT/results.txt"
    (cd bench/out && tar czf "$OUT/results_runs.tgz" runs/*.json runs/*.log results_*.md 2>/dev/null)
fi
echo "total $((SECONDS - START))s"

#!/usr/bin/env bash
# The whole GPU check in one command, from the repository root, for a short lease
# on a machine that has PyTorch but cannot reach a package index. Wheels of
# missing dependencies (pydantic and its three helpers) go in device_payload/whl,
# CIFAR-FS's meta_test.npz in device_payload/cifar-fs (both git-ignored; the
# CIFAR-FS rows are skipped without it). Results land in $OUT (default
# ./gpu-out): gpu.jsonl, the logs, the default job's run folder.
#   bash benchmarks/gpu_run.sh
#   VARIANTS=1shot-batched,1shot-graph EVAL_TASKS=0 JOB_ARGS="--set train.cuda_graph=true" bash benchmarks/gpu_run.sh
#   SKIP_INSTALL=1 STEPS=2 EVAL_TASKS=10 JOB_TIMEOUT=20 bash benchmarks/gpu_run.sh   # dry run on a CPU
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
SITE=/tmp/purer-site
if [ -z "${SKIP_INSTALL:-}" ]; then  # SKIP_INSTALL=1: purer is already installed here
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation \
        --upgrade --target "$SITE" device_payload/whl/*.whl . || exit 1
    export PYTHONPATH="$SITE"
fi
export PYTHONUNBUFFERED=1 PURER_CACHE=/tmp/purer-cache
EVAL_DATA=synthetic-shapes
if [ -f device_payload/cifar-fs/meta_test.npz ]; then
    export PURER_DATA_DIR="$PWD/device_payload"
    EVAL_DATA=synthetic-shapes,cifar-fs
fi
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"

# 1. the tests that need a GPU (they skip on CPU machines, so CI never runs them)
timeout "${TESTS_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/core/engine/test_cuda_graph.py} \
    2>&1 | tail -15 | tee "$OUT/tests.log"

# 2. batched-path checks, step variants, evaluation (python -m benchmarks gpu)
VARIANTS=${VARIANTS:-1shot-batched,1shot-unbatched,5shot-batched,1shot-batched-bf16,1shot-graph,5shot-graph,1shot-graph-unbatched,1shot-graph-bf16,sh-1shot-batched,sh-1shot-graph,1shot-batched-compile,5shot-batched-compile,1shot-graph-compile}
timeout "${BENCH_TIMEOUT:-300}" python3 -m benchmarks gpu --json "$OUT/gpu.jsonl" --only "$VARIANTS" \
    --repeats "${STEPS:-50}" --eval-tasks "${EVAL_TASKS:-600}" --eval-data "$EVAL_DATA" \
    > "$OUT/bench.log" 2>&1
grep -v "━" "$OUT/bench.log" | grep -v "^\s*$" | tail -30

# 3. the default job (`purer run`), zoo build included
SECONDS=0
(cd "$OUT" && timeout "${JOB_TIMEOUT:-150}" python3 -c "from purer.cli.main import main; main()" run \
    --out "$OUT/default-job" ${JOB_ARGS:-} > "$OUT/default-job.log" 2>&1)
echo "default job (${JOB_ARGS:-no extra options}): rc $? in $SECONDS s"
grep -v "━" "$OUT/default-job.log" | tail -12

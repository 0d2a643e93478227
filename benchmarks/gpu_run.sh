#!/usr/bin/env bash
# The whole GPU check in one command, for a short lease on a machine that has
# PyTorch but cannot reach a package index. Wheels of missing dependencies
# (pydantic and its three helpers) go in device_payload/whl, CIFAR-FS's
# meta_test.npz in device_payload/cifar-fs (both git-ignored). Results land in
# $OUT (default ./gpu-out): gpu.jsonl, the logs, the default job's run folder.
#   bash benchmarks/gpu_run.sh
#   SKIP_INSTALL=1 STEPS=2 EVAL_TASKS=10 DEFAULT_JOB_TIMEOUT=20 COMPILE_TIMEOUT=60 bash benchmarks/gpu_run.sh   # dry run
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
SITE=/tmp/purer-site
if [ -z "${SKIP_INSTALL:-}" ]; then  # SKIP_INSTALL=1: purer is already installed here
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation \
        --upgrade --target "$SITE" device_payload/whl/*.whl . || exit 1
    export PYTHONPATH="$SITE"
fi
export PYTHONUNBUFFERED=1 PURER_CACHE=/tmp/purer-cache
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
cd benchmarks
EAGER=1shot-batched,1shot-unbatched,5shot-batched,1shot-batched-bf16,1shot-batched-first-order,sh-1shot-batched
STEPS=${STEPS:-50} EVAL_TASKS=${EVAL_TASKS:-600}
timeout 200 python3 gpu.py --out "$OUT/gpu.jsonl" --only $EAGER --cifar-fs ../device_payload/cifar-fs \
    --steps "$STEPS" --eval-tasks "$EVAL_TASKS" \
    > "$OUT/eager.log" 2>&1
grep -v "━" "$OUT/eager.log" | tail -40
cd "$OUT" && SECONDS=0
timeout "${DEFAULT_JOB_TIMEOUT:-120}" python3 -c "from purer.cli.main import main; main()" run --out "$OUT/default-job" \
    > "$OUT/default-job.log" 2>&1
echo "default job: rc $? in $SECONDS s"; grep -v "━" "$OUT/default-job.log" | tail -15
cd - > /dev/null
timeout "${COMPILE_TIMEOUT:-150}" python3 gpu.py --out "$OUT/gpu.jsonl" --eval-tasks 0 \
    --steps "$STEPS" --only 1shot-batched-compile,5shot-batched-compile > "$OUT/compile.log" 2>&1
grep -v "━" "$OUT/compile.log" | grep -v "^\s*$" | tail -25

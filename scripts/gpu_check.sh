#!/usr/bin/env bash
# What a GPU CI runner (or a developer with a GPU) runs: the examples on CUDA, the GPU tests,
# and a recorded allocator snapshot. Writes everything under ${OUT:-gpu-check-out}.
#
#   scripts/gpu_check.sh              # with leakcheck importable (installed or PYTHONPATH=.)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 COLUMNS=140

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

status=0
for variant in seed fixed; do
  echo "== leakcheck run mrv2-$variant-cuda"
  "$py" -m leakcheck run "leakcheck/examples/mrv2-$variant-cuda.yaml" --json "$out/mrv2-$variant-cuda.json"
  code=$?
  expected=$([ "$variant" = seed ] && echo 1 || echo 0)
  echo "exit code $code (expected $expected)"
  [ "$code" = "$expected" ] || status=1
done

echo "== allocator snapshot of the seed runner"
"$py" scripts/capture_cuda_snapshot.py leakcheck/examples/mrv2-seed-cuda.yaml "$out/snapshot" || status=1

echo "== tests (GPU ones run here; CPU ones too)"
"$py" -m pytest -q -x -p no:cacheprovider tests || status=1
exit $status

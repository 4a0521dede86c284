#!/usr/bin/env bash
# What a GPU CI runner (or a developer with a GPU) runs: the examples on CUDA (once, and with
# cycles: 3), a recorded allocator snapshot, and the test suite with its GPU tests.
# Writes reports under ${OUT:-gpu-check-out}. Needs leakcheck importable (installed, or
# PYTHONPATH=.) and, for the transformers example, leakcheck[hf].
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 COLUMNS=150

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
"$py" -c "import transformers; print('transformers', transformers.__version__)" || echo "transformers: not installed"

status=0
check() {  # check NAME EXPECTED_EXIT ARGS...
  local name=$1 expected=$2
  shift 2
  echo "== leakcheck run $* ($name)"
  "$py" -m leakcheck run "$@" --json "$out/$name.json"
  local code=$?
  echo "exit code $code (expected $expected)"
  [ "$code" = "$expected" ] || status=1
}
check mrv2-seed-cuda 1 leakcheck/examples/mrv2-seed-cuda.yaml
check mrv2-fixed-cuda 0 leakcheck/examples/mrv2-fixed-cuda.yaml
check mrv2-seed-cuda-cycles 1 leakcheck/examples/mrv2-seed-cuda.yaml --cycles 3
check mrv2-fixed-cuda-cycles 0 leakcheck/examples/mrv2-fixed-cuda.yaml --cycles 3
check hf-llama-seed 1 leakcheck/examples/hf-llama-seed.yaml
check hf-llama-fixed 0 leakcheck/examples/hf-llama-fixed.yaml
check hf-llama-seed-cycles 1 leakcheck/examples/hf-llama-seed.yaml --cycles 3
check hf-llama-fixed-cycles 0 leakcheck/examples/hf-llama-fixed.yaml --cycles 3

check streams-seed 1 leakcheck/examples/streams-seed.yaml
check streams-fixed 0 leakcheck/examples/streams-fixed.yaml

echo "== per-cycle NVML growth by category (new stream per load; target: 95% named)"
"$py" scripts/gpu_cycles.py "$out/streams-seed.json" "$out/streams-fixed.json" || status=1

echo "== allocator snapshot joined with a live audit"
"$py" scripts/capture_cuda_snapshot.py "$out" || status=1

echo "== tests (the GPU ones run here)"
"$py" -m pytest -q -p no:cacheprovider tests 2>&1 | tail -40 || status=1
exit $status

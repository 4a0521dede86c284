#!/usr/bin/env bash
# The real-library cases of tests/cases/ on a CUDA device: leakcheck's report for each seed and
# fixed twin (with --prove), and the streams example with cycles: 3. With --truth, instead, the
# cases' truth measured without leakcheck (tests/cases/truth.py). Writes under ${OUT:-gpu-cases-out}.
#   scripts/gpu_cases.sh [--truth] [case ...]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-cases-out}"
mkdir -p "$out/reports"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 COLUMNS=120
truth=0
if [ "${1:-}" = "--truth" ]; then truth=1; shift; fi
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(cudagraph_trees optim autograd dataloader torchscript jit_freeze sparse nested compile)

if [ $truth = 1 ]; then
  modules=()
  for c in "${cases[@]}"; do modules+=("case_$c"); done
  "$py" tests/cases/truth.py "${modules[@]}" --device cuda --write "$out/truth-cuda.json"
  exit $?
fi

for c in "${cases[@]}"; do
  for v in seed fixed; do
    echo "== $c-$v"
    "$py" -m leakcheck run "tests/cases/$c-$v.yaml" --device cuda --json "$out/reports/$c-$v.json" > "$out/reports/$c-$v.txt" 2>&1
    echo "exit $?"
  done
done
for v in seed fixed; do
  echo "== streams-$v (cycles: 3)"
  "$py" -m leakcheck run "leakcheck/examples/streams-$v.yaml" --json "$out/reports/streams-$v.json" > "$out/reports/streams-$v.txt" 2>&1
  echo "exit $?"
done
"$py" scripts/gpu_cycles.py "$out/reports/streams-seed.json" "$out/reports/streams-fixed.json"
tar -czf "$out/reports.tar.gz" -C "$out" reports && rm -r "$out/reports"

#!/usr/bin/env bash
# `--snapshot` on a GPU: the CUDA example with and without it (same verdict, same bytes), then
# the pickles PyTorch's memory_viz opens are loaded and checked: segments, an event trace with
# Python stacks from the runner's own file, the leaked blocks still active at `shutdown`, and
# the heap audit still moving torch's allocated bytes by 0. Also --cycles 2 and --isolate.
# Needs leakcheck importable (installed, or PYTHONPATH=.); writes under ${OUT:-gpu-snapshot-out}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-snapshot-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 COLUMNS=150
config=leakcheck/examples/mrv2-seed-cuda.yaml
status=0

expect() {  # expect NAME EXPECTED_EXIT ARGS...
  local name=$1 expected=$2
  shift 2
  echo "== leakcheck run $config $* ($name)"
  "$py" -m leakcheck run "$config" "$@" --json "$out/$name.json" --quiet
  local code=$?
  echo "exit code $code (expected $expected)"
  [ "$code" = "$expected" ] || status=1
}
expect plain 1
expect snapshot 1 --snapshot "$out/mrv2.pickle"
expect cycles 1 --cycles 2 --snapshot "$out/cycles.pickle"
expect isolated 1 --isolate --snapshot "$out/isolated.pickle"
if "$py" -c "import objgraph" 2>/dev/null; then
  expect graph 1 --graph "$out/mrv2-seed-cuda.svg" --no-prove
fi

"$py" - "$out" <<'EOF' || status=1
import json, pickle, sys
from pathlib import Path

out = Path(sys.argv[1])
problems = []

def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        problems.append(what)

def load(name):
    path = out / name
    if not path.exists():
        check(False, f"{name} exists")
        return None
    with open(path, "rb") as f:
        data = pickle.load(f)
    check(isinstance(data, dict) and "segments" in data and "device_traces" in data, f"{name} is a snapshot")
    return data

plain = json.loads((out / "plain.json").read_text())
snap = json.loads((out / "snapshot.json").read_text())
check(snap["leaked_bytes"] == plain["leaked_bytes"], f"same leaked bytes with and without --snapshot ({snap['leaked_bytes']:,})")
check([o["path"] for o in snap["owners"]] == [o["path"] for o in plain["owners"]], "same holders")
for phase in ("shutdown", "collected"):
    check(any(f"mrv2.{phase}.pickle" in n for n in snap["notes"]), f"the report names mrv2.{phase}.pickle")
audit = {m["phase"]: m for m in snap.get("audit_memory", [])}
before, after = audit.get("audit:before", {}), audit.get("audit:after", {})
check(before.get("torch_allocated_bytes") == after.get("torch_allocated_bytes") is not None,
      "the heap audit allocated nothing on the device (torch allocated bytes before == after)")
check(snap.get("sites") and snap["sites"][0]["site"] != "?", f"allocation sites still named: {snap['sites'][:1]}")

for name in ("mrv2.shutdown.pickle", "mrv2.collected.pickle"):
    data = load(name)
    if data is None:
        continue
    traces = [event for device in data["device_traces"] for event in device]
    allocs = [e for e in traces if e.get("action") == "alloc"]
    check(len(allocs) > 0, f"{name}: {len(traces):,} trace events, {len(allocs):,} allocations")
    runner_frames = [e for e in allocs if any("mrv2.py" in f.get("filename", "") for f in e.get("frames", []))]
    check(len(runner_frames) > 0, f"{name}: {len(runner_frames):,} allocations carry a stack through mrv2.py")
    active = sum(b["size"] for s in data["segments"] for b in s["blocks"] if b["state"] == "active_allocated")
    check(active >= snap["leaked_bytes"], f"{name}: {active:,} bytes active >= {snap['leaked_bytes']:,} leaked")

for name in ("cycles.shutdown.pickle", "cycles.collected.pickle", "cycles.cycle2.shutdown.pickle",
             "cycles.cycle2.collected.pickle", "isolated.shutdown.pickle", "isolated.collected.pickle"):
    load(name)
if (out / "graph.json").exists():
    svg, dot = out / "mrv2-seed-cuda.svg", out / "mrv2-seed-cuda.dot"
    if svg.exists():
        check(svg.read_text().count("<svg") == 1, "the CUDA run's --graph wrote an svg")
    else:  # no graphviz on this machine: the .dot instead
        check("runner.model_state" in dot.read_text(), "no graphviz: the CUDA run's --graph wrote the .dot")
print("snapshot checks:", "all passed" if not problems else f"{len(problems)} failed")
sys.exit(1 if problems else 0)
EOF
[ $? = 0 ] || status=1
echo "gpu_snapshot_check: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status

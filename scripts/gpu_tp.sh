#!/usr/bin/env bash
# The tensor-parallel example on a multi-GPU machine (issue 10): --nproc 2 (and 4 where four
# GPUs are visible), seed and fixed, --cycles 3. Prints, per rank: verdict, holders, graph
# pools, process-group items, and per-cycle NVML growth against the rank's model size.
# Usage: scripts/gpu_tp.sh [OUT_DIR]   (reports land in OUT_DIR, default ./gpu-tp-reports)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu-tp-reports}
mkdir -p "$OUT"
GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
if [ "$GPUS" -lt 2 ]; then echo "needs 2 GPUs, found $GPUS"; exit 2; fi
if [ -z "${SIZES:-}" ]; then SIZES="2"; [ "$GPUS" -ge 4 ] && SIZES="2 4"; fi  # SIZES="4" runs one size only
status=0
for n in $SIZES; do
  for variant in seed fixed; do
    report="$OUT/tp-$variant-cuda-nproc$n.json"
    echo "=== tp-$variant-cuda --nproc $n --cycles 3 ==="
    $PY -m leakcheck run "leakcheck/examples/tp-$variant-cuda.yaml" --nproc "$n" --cycles 3 --json "$report" \
      > "$OUT/tp-$variant-cuda-nproc$n.txt" 2>&1
    code=$?
    echo "exit code $code (expected $([ $variant = seed ] && echo 1 || echo 0))"
    if { [ $variant = seed ] && [ $code -ne 1 ]; } || { [ $variant = fixed ] && [ $code -ne 0 ]; }; then status=1; fi
    $PY - "$report" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
print(f"verdict {data['verdict']}, {data['leaked_bytes']:,} bytes leaked over {data.get('world_size')} ranks")
for rank in data.get("ranks", []):
    env = rank.get("environment", {})
    print(f"-- rank {rank.get('rank')} on {rank['device']} ({env.get('gpu', '?')}): {rank['verdict']}, "
          f"{rank['leaked_bytes']:,} bytes leaked" + (f", error {rank['error']['type']} in {rank['error']['phase']}" if rank.get("error") else ""))
    for owner in rank["owners"]:
        if owner["reachable_bytes"]:
            print(f"   holder {owner['path']:<40} reach {owner['reachable_bytes']:>14,}  retain {owner['retained_bytes']:>14,}")
    kinds = {}
    for storage in rank["storages"]:
        kinds.setdefault(storage["kind"], []).append(storage)
    for kind, found in sorted(kinds.items()):
        if kind != "tensor":
            print(f"   {kind}: {len(found)} item(s), {sum(s['nbytes'] for s in found):,} bytes"
                  + "".join(f"; {s['note']}" for s in found[:1] if s.get("note")))
    loaded = next((m for m in rank["memory"] if m["phase"] == "loaded"), None)
    base = next((m for m in rank["memory"] if m["phase"] == "baseline"), None)
    model = None
    if loaded and base and loaded.get("torch_allocated_bytes") is not None:
        model = loaded["torch_allocated_bytes"] - base["torch_allocated_bytes"]
        print(f"   per-rank model size (allocated at loaded - baseline): {model:,} bytes")
    for cycle in rank.get("cycles", []):
        growth = cycle.get("nvml_growth_bytes")
        share = f" = {100 * growth / model:.2f}% of the model" if growth is not None and model else ""
        print(f"   cycle {cycle['cycle']}: NVML growth {growth if growth is None else f'{growth:,}'}{share}, "
              f"leaked {cycle['leaked_bytes']:,}")
for note in data.get("notes", []):
    if "only" in note or "process group" in note:
        print("note:", note)
PY
  done
done
exit $status

#!/usr/bin/env bash
# Issue 9, "what it must show" 5: every shipped MSRC config runs from a fresh clone with nothing
# trained beforehand: wsss pipeline --config configs/msrc/<m>.yaml --data.limit 24 --trainer.max_epochs 1 --output_dir X
#   bash benchmarks/smoke_configs.sh [OUT_ROOT [NAME ...]]   (default /tmp/wsss_smoke, every config); one line per config
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/wsss_smoke}"
shift || true
names=("$@")
mkdir -p "$out"
if [[ ${#names[@]} -eq 0 ]]; then names=(); for c in configs/msrc/*.yaml; do names+=("$(basename "$c" .yaml)"); done; fi
for m in "${names[@]}"; do
  cfg="configs/msrc/$m.yaml"
  s=$(date +%s)
  if OMP_NUM_THREADS=1 .venv/bin/wsss pipeline --config "$cfg" --data.limit 24 --trainer.max_epochs 1 --output_dir "$out/$m" > "$out/$m.log" 2>&1; then
    seeds=$(grep -E '^\[seeds\]' "$out/$m.log" | tail -1)
    echo "$m: ok in $(( $(date +%s) - s )) s; ${seeds:-no seeds line}"
  else
    echo "$m: FAILED in $(( $(date +%s) - s )) s: $(grep -E 'wsss: error|Error' "$out/$m.log" | tail -1)"
  fi
done

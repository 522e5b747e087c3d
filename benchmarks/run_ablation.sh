#!/usr/bin/env bash
# Run named MSRC CAM-baseline ablation variants one after another from a frozen code tree.
#   bash benchmarks/run_ablation.sh CODE_DIR name "--key value ..." [name "--overrides" ...]
# Each variant: wsss pipeline --config configs/msrc/cam.yaml <overrides> --output_dir runs/msrc/abl/<name>
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; shift
mkdir -p "$repo/benchmarks/logs/ablation"
while [[ $# -gt 0 ]]; do
  name="$1"; over="$2"; shift 2
  echo "== $name ($(date -u +%H:%M:%S)): $over"
  start=$(date +%s)
  # shellcheck disable=SC2086
  (cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/wsss" pipeline --config configs/msrc/cam.yaml $over \
     --output_dir "$repo/runs/msrc/abl/$name") > "$repo/benchmarks/logs/ablation/$name.log" 2>&1 || echo "   FAILED"
  echo "   done in $(( $(date +%s) - start )) s"
  grep -E '^\[(seeds|pseudo|confident)' "$repo/benchmarks/logs/ablation/$name.log" || true
done

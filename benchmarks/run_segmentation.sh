#!/usr/bin/env bash
# Issue 11 benchmark: DeepLabV3+ (Lite0) on a CAM run's pseudo masks, and the fully supervised upper
# bound with the same network and recipe (configs/msrc/cam.yaml, section segmentation), from a frozen code tree.
#   bash benchmarks/run_segmentation.sh CODE_DIR WEAK_RUN_DIR GT_RUN_DIR [extra overrides...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; weak="$2"; gt="$3"; shift 3
mkdir -p "$repo/benchmarks/logs/segmentation"
run() {
  local name="$1"; shift
  echo "== $name ($(date -u +%H:%M:%S))"
  local s=$(date +%s)
  (cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/wsss" segment --config configs/msrc/cam.yaml \
     --segmentation.enabled true "$@") > "$repo/benchmarks/logs/segmentation/$name.log" 2>&1 || echo "   FAILED"
  echo "   done in $(( $(date +%s) - s )) s"
  grep -E '^\[segment' "$repo/benchmarks/logs/segmentation/$name.log" || true
}
run weak --output_dir "$weak" "$@"
run gt --output_dir "$gt" --segmentation.source gt --segmentation.eval_splits '[val]' "$@"

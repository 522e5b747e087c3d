#!/usr/bin/env bash
# Issue 11 benchmark: DeepLabV3+ (Lite0) on a CAM run's pseudo masks, and the fully supervised upper
# bound with the same network and recipe (configs/msrc/cam.yaml, section segmentation), from a frozen code tree.
#   bash benchmarks/run_segmentation.sh CODE_DIR CAM_RUN WEAK_RUN_DIR GT_RUN_DIR [extra overrides...]
# CAM_RUN's pseudo masks (pseudo/, metrics/pseudo.json) are hard-linked into WEAK_RUN_DIR, so the
# segmentation run has a directory of its own whatever stages CAM_RUN holds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; cam="$(realpath -m "$2")"; weak="$(realpath -m "$3")"; gt="$(realpath -m "$4")"; shift 4
mkdir -p "$weak/metrics"
[[ -d "$weak/pseudo" ]] || cp -al "$cam/pseudo" "$weak/pseudo"
[[ -f "$weak/metrics/pseudo.json" ]] || cp "$cam/metrics/pseudo.json" "$weak/metrics/pseudo.json"
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
# SEG_RUNS="weak gt" (default) or one of them
for which in ${SEG_RUNS:-weak gt}; do
  case "$which" in
    weak) run "$(basename "$weak")" --output_dir "$weak" "$@" ;;
    gt) run "$(basename "$gt")" --output_dir "$gt" --segmentation.source gt --segmentation.eval_splits '[val]' "$@" ;;
  esac
done

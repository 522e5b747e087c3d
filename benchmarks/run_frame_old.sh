#!/usr/bin/env bash
# Issue 9, must-show 1: GSLM (rounds) and P-NOC (two optimisers) re-run through the plug-in frame
# with the recipe they were first measured on (before the frame, 2026-11-22/23), to compare with
# their recorded metrics (benchmarks/msrc-old-recipe.md). The old recipe as overrides of today's
# configs: momentum 0.9, Kaiming fan_out classifier init, EfficientNet's 1280-ch conv_head
# features (model.feature_layer head); GSLM 2 epochs per SLM round; P-NOC k_noc 2.
#   bash benchmarks/run_frame_old.sh CODE_DIR
# Output: runs/msrc/frame_old/{gslm,pnoc}; logs benchmarks/logs/frame_old/*.log
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"
old=(--seed 0 --optim.momentum 0.9 --model.classifier_init kaiming_fan_out --model.feature_layer head)
mkdir -p "$repo/benchmarks/logs/frame_old" "$repo/runs/msrc/frame_old"
run() {  # name config extra-overrides...
  local name="$1" cfg="$2"; shift 2
  echo "== $name ($(date -u +%H:%M:%S))"
  local s; s=$(date +%s)
  (cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/wsss" pipeline --config "$cfg" "${old[@]}" "$@" \
     --output_dir "$repo/runs/msrc/frame_old/$name") > "$repo/benchmarks/logs/frame_old/$name.log" 2>&1 || echo "   FAILED"
  echo "   done in $(( $(date +%s) - s )) s"
  grep -E '^\[(seeds|pseudo|requires)' "$repo/benchmarks/logs/frame_old/$name.log" | tail -4 || true
}
# GSLM first: its requires/seed is the old-recipe CAM run, trained here (found by fingerprint afterwards)
run gslm configs/msrc/gslm.yaml --method.epochs_per_round 2
# P-NOC's noc starts from the same old-recipe CAM: hard-link it so the fingerprint check reuses it
mkdir -p "$repo/runs/msrc/frame_old/pnoc/requires"
[[ -e "$repo/runs/msrc/frame_old/pnoc/requires/oc" ]] || cp -al "$repo/runs/msrc/frame_old/gslm/requires/seed" "$repo/runs/msrc/frame_old/pnoc/requires/oc"
run pnoc configs/msrc/pnoc.yaml --method.k_noc 2

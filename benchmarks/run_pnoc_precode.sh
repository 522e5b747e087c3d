#!/usr/bin/env bash
# Issue 9 control: P-NOC with the code from before the plug-in frame (f302eb3, the commit that
# recorded P-NOC's 46.4) on the SAME ordinary classifier as the run through the frame
# (runs/msrc/frame_old/pnoc/requires/oc, made by run_frame_old.sh), same seed 0 and recipe (the
# old code's configs/msrc/pnoc.yaml holds it: momentum 0.9, Kaiming fan-out, 1280-ch head, k_noc 2).
# Same result as the frame's run -> the frame reproduces the old code and the record differs by
# its OC; a different one -> the frame changed P-NOC's training.
#   bash benchmarks/run_pnoc_precode.sh OLD_TREE   (a worktree at f302eb3)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
old="$1"
oc="$repo/runs/msrc/frame_old/pnoc/requires/oc/model.safetensors"
log="$repo/benchmarks/logs/frame_old/pnoc_precode.log"
echo "== pnoc_precode ($(git -C "$old" log -1 --format=%h)) ($(date -u +%H:%M:%S))"
s=$(date +%s)
(cd "$old" && PYTHONPATH="$old/src" "$repo/.venv/bin/wsss" pipeline --config configs/msrc/pnoc.yaml --seed 0 \
   --method.oc_checkpoint "$oc" --output_dir "$repo/runs/msrc/frame_old/pnoc_precode") > "$log" 2>&1 || echo "   FAILED"
echo "   done in $(( $(date +%s) - s )) s"
grep -E '^\[(seeds|pseudo)' "$log" | tail -2 || true

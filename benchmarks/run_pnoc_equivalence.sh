#!/usr/bin/env bash
# Issue 9 control, step by step: P-NOC trained for 6 steps (48 MSRC images, 1 epoch, every step
# logged) on the SAME ordinary classifier and seed, by the pre-frame code (OLD_TREE, f302eb3) and
# by the frame (CODE_DIR) in three variants; compares every logged loss term per step.
#   bash benchmarks/run_pnoc_equivalence.sh CODE_DIR OLD_TREE OC_RUN_DIR
# OC_RUN_DIR: a CAM run of the old recipe (e.g. runs/msrc/frame_old/pnoc/requires/oc).
# Output: /tmp/wsss_pnoc_eq/<variant>; CSVs kept in benchmarks/logs/frame_old/equivalence/.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; old="$2"; oc="$(realpath "$3")"
tmp=/tmp/wsss_pnoc_eq; rm -rf "$tmp"; mkdir -p "$tmp" "$repo/benchmarks/logs/frame_old/equivalence"
short=(--seed 0 --data.limit 48 --trainer.max_epochs 1 --trainer.log_every_n_steps 1)
oldrecipe=(--optim.momentum 0.9 --model.classifier_init kaiming_fan_out --model.feature_layer head --method.k_noc 2)
frame() {  # name overrides...
  local name="$1"; shift
  mkdir -p "$tmp/$name/requires" && cp -al "$oc" "$tmp/$name/requires/oc"
  (cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/wsss" train --config configs/msrc/pnoc.yaml "${short[@]}" \
     "${oldrecipe[@]}" "$@" --output_dir "$tmp/$name") > "$tmp/$name.log" 2>&1
  cp "$tmp/$name/logs/metrics.csv" "$repo/benchmarks/logs/frame_old/equivalence/$name.csv"
}
# the pre-frame code's configs/msrc/pnoc.yaml holds the old recipe itself
(cd "$old" && PYTHONPATH="$old/src" "$repo/.venv/bin/wsss" train --config configs/msrc/pnoc.yaml "${short[@]}" \
   --method.oc_checkpoint "$oc/model.safetensors" --output_dir "$tmp/old") > "$tmp/old.log" 2>&1
cp "$tmp/old/logs/metrics.csv" "$repo/benchmarks/logs/frame_old/equivalence/old.csv"
frame nocl --model.channels_last false            # the frame, same memory layout as the old code
frame frame                                       # the frame as shipped (channels_last: rounding only)
frame bs --method.noc_bn_mode batch_stats         # the frame before 2026-12-07 (noc BN on batch stats)
cmp="$repo/benchmarks/scripts/compare_train_logs.py"
for v in nocl frame bs; do
  echo "== $v vs pre-frame code"; "$repo/.venv/bin/python" "$cmp" "$tmp/$v/logs/metrics.csv" "$tmp/old/logs/metrics.csv" || true
done

#!/usr/bin/env bash
# Issue 12, must-show 2: CPN's Table 2 ablation order on MSRC (and grid vs superpixel patches), one
# training seed per call, from a frozen code tree. The baseline row is the CAM baseline (ablation-cam.md)
# and the last row (+ PRCM) is the full CPN run (runs/msrc/cpn@s<SEED>); this runs the rows between:
#   bash benchmarks/run_cpn_table2.sh CODE_DIR SEED [ROW ...]   (default: every row below)
# Rows (paper Table 2 -> wsss overrides of configs/msrc/cpn.yaml):
#   cpn_tcp_pcm     baseline + L_tcp + PCM                 --method.w_cpcr 0 --method.prcm_form none
#   cpn_cpcr_noohem + L_cpcr (no OHEM)                     --method.ohem_ratio 1.0 --method.prcm_form none
#   cpn_cpcr_ohem   + OHEM                                 --method.prcm_form none
#   cpn_grid        full CPN, grid patches K = {56,112}@448 --method.patches grid   (paper Fig. 7)
# Output: runs/msrc/<row>@s<SEED>, logs benchmarks/logs/methods/<row>@s<SEED>.log.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; seed="$2"; shift 2
declare -A over=(
  [cpn_tcp_pcm]="--method.w_cpcr 0 --method.prcm_form none"
  [cpn_cpcr_noohem]="--method.ohem_ratio 1.0 --method.prcm_form none"
  [cpn_cpcr_ohem]="--method.prcm_form none"
  [cpn_grid]="--method.patches grid"
)
rows=("$@"); [[ ${#rows[@]} -gt 0 ]] || rows=(cpn_tcp_pcm cpn_cpcr_noohem cpn_cpcr_ohem cpn_grid)
for row in "${rows[@]}"; do
  [[ -n "${over[$row]:-}" ]] || { echo "run_cpn_table2: unknown row $row (one of ${!over[*]})" >&2; exit 2; }
  # shellcheck disable=SC2086
  RUN_NAME="$row" bash "$repo/benchmarks/run_method_seed.sh" "$code" cpn "$seed" - ${over[$row]}
done

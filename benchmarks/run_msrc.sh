#!/usr/bin/env bash
# One seed of each MSRC CPU recipe, one after another (never in parallel: 2 cores), gathered by
# collect.py into msrc-old-recipe.md / results/msrc-old-recipe.json (its format: one seed per row).
# The 3-seed table benchmarks/msrc.md is made with run_method_seed.sh + scripts/msrc_table.py.
#   bash benchmarks/run_msrc.sh            # every recipe
#   bash benchmarks/run_msrc.sh cam poc    # some of them
# Each run writes runs/msrc/<name>/ and resumes if interrupted; logs go to benchmarks/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
recipes=("$@")
[[ ${#recipes[@]} -gt 0 ]] || recipes=(cam puzzle occse poc pnoc gslm gslm_poc gslm_pnoc)
mkdir -p benchmarks/logs
for r in "${recipes[@]}"; do
  echo "== $r ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  .venv/bin/wsss pipeline --config "configs/msrc/$r.yaml" > "benchmarks/logs/$r.log" 2>&1
  echo "   done in $(( $(date +%s) - start )) s"; grep -E '^\[(seeds|pseudo|confident)' "benchmarks/logs/$r.log" || true
done
.venv/bin/python benchmarks/collect.py > /dev/null
echo "tables: benchmarks/msrc-old-recipe.md"

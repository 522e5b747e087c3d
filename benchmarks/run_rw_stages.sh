#!/usr/bin/env bash
# The random walk on a finished run of any method (issue 10, item 2: e.g. GSLM's CAMs), through the
# single-stage commands (affinity, rw, report) on a hard-linked copy of the run (stages write
# atomically, so the original is never modified); no stage before affinity is re-run.
#   bash benchmarks/run_rw_stages.sh CODE_DIR RUN NAME CONFIG [overrides...]
# CONFIG: the configs/msrc/ file RUN was made with. The overrides must make the config equal the run's
# own: run fingerprints key the absolute paths a dependency (requires) gave the method, and the copy
# lives elsewhere, so pin them, e.g. for GSLM: --requires "{}" --method.seed_source <RUN>/requires/seed
# (plus the parameters the rounds recipe writes out: --method.reduction mean
# --method.threshold_increment_per_round 0.0).
# Output runs/msrc/rw/<NAME>, log benchmarks/logs/rw/<NAME>.log
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; src="$(realpath "$2")"; name="$3"; config="$4"; shift 4
source "$repo/benchmarks/rw_common.sh"
rw_prepare "$src" "$name"
echo "== rw stages $name from $src, seed $seed ($(date -u +%H:%M:%S))"
s=$(date +%s)
: > "$log"
for stage in affinity rw report; do
  (cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/wsss" "$stage" --config "configs/msrc/$config" --seed "$seed" \
     --output_dir "$out" --affinity.enabled true "$@") >> "$log" 2>&1 || { echo "   FAILED: $(grep -E 'wsss: error' "$log" | tail -1)"; break; }
done
echo "   done in $(( $(date +%s) - s )) s"
grep -E '^\[(affinity_labels|pseudo_rw|pseudo_rw_crf)\]' "$log" | tail -3 || true

#!/usr/bin/env bash
# Random-walk pseudo masks of an existing CAM run with one affinity variant (issue 10), without
# touching that run: its directory is hard-linked (stages write atomically, so the originals are
# never modified) and the pipeline reuses every stage up to refine by fingerprint.
#   [CONFIG=occse.yaml] bash benchmarks/run_rw_variant.sh CODE_DIR CAM_RUN NAME [overrides...]
# CONFIG: the configs/msrc/ file CAM_RUN was made with (default cam.yaml), e.g. occse.yaml for the
# walk on another method's CAMs (issue 10, item 2); its dependency runs inside CAM_RUN/requires are reused.
# Output runs/msrc/rw/<NAME>, log benchmarks/logs/rw/<NAME>.log
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; cam="$(realpath "$2")"; name="$3"; shift 3
source "$repo/benchmarks/rw_common.sh"
rw_prepare "$cam" "$name"
echo "== rw $name from $cam, seed $seed ($(date -u +%H:%M:%S))"
s=$(date +%s)
(cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/wsss" pipeline --config "configs/msrc/${CONFIG:-cam.yaml}" --seed "$seed" \
   --output_dir "$out" --affinity.enabled true "$@") > "$log" 2>&1 || echo "   FAILED: $(grep -E 'wsss: error' "$log" | tail -1)"
echo "   done in $(( $(date +%s) - s )) s"
grep -E '^\[(pseudo|pseudo_rw|affinity_labels)\]' "$log" | tail -3 || true

#!/usr/bin/env bash
# One MSRC method run at one training seed, from a frozen code tree, reusing the CAM baseline run
# of the same seed as its dependency (requires: oc / seed) when that run's fingerprint matches.
#   [RUN_NAME=variant] bash benchmarks/run_method_seed.sh CODE_DIR METHOD SEED CAM_RUN_DIR [overrides...]
# CAM_RUN_DIR "-": the method needs no CAM run (CPN), or let its requires: train one
# GSLM+ (gslm_occse, gslm_poc): pass the GLM run instead, e.g. runs/msrc/occse@s<SEED> (its own requires/
# come with it; being fingerprinted, it is linked as is, without the CAM-config adoption)
# Output: runs/msrc/<NAME>@s<SEED>, log benchmarks/logs/methods/<NAME>@s<SEED>.log, where NAME is RUN_NAME
# (an ablation variant with overrides, e.g. RUN_NAME=cpn_no_prcm ... --method.prcm_form none) or METHOD
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; method="$2"; seed="$3"; cam="$4"; shift 4
[[ "$cam" == "-" ]] || cam="$(realpath -m "$cam")"
name="${RUN_NAME:-$method}"
out="$repo/runs/msrc/$name@s$seed"
mkdir -p "$repo/benchmarks/logs/methods" "$out/requires"
for dep in oc seed; do  # the dependency names the MSRC configs use for the CAM baseline
  if [[ "$cam" != "-" && ! -e "$out/requires/$dep" ]]; then
    cp -al "$cam" "$out/requires/$dep"
    # a run wsss fingerprinted itself (every run since 2026-11-24, and every GSLM+ GLM run) needs no adoption
    if compgen -G "$cam/fingerprints/*.json" > /dev/null; then continue; fi
    # CAM runs made before wsss wrote fingerprints: record them after checking config.json key by key
    (cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/python" "$repo/benchmarks/scripts/adopt_run.py" "$out/requires/$dep" \
       --config configs/msrc/cam.yaml --seed "$seed" --legacy-bn-mode batch_stats) || echo "   (adopt failed: the dependency will be recomputed or refused)"
  fi
done
log="$repo/benchmarks/logs/methods/$name@s$seed.log"
echo "== $name ($method) seed $seed ($(date -u +%H:%M:%S))"
s=$(date +%s)
(cd "$code" && PYTHONPATH="$code/src" "$repo/.venv/bin/wsss" pipeline --config "configs/msrc/$method.yaml" --seed "$seed" \
   --output_dir "$out" "$@") > "$log" 2>&1 || echo "   FAILED: $(grep -E 'wsss: error' "$log" | tail -1)"
echo "   done in $(( $(date +%s) - s )) s"
grep -E '^\[(seeds|pseudo|confident)' "$log" | tail -3 || true

#!/usr/bin/env bash
# Issue 8's GSLM+ rows at one training seed: the CAM baseline at that seed (if its run is missing), OC-CSE
# erasing against it, then GSLM on OC-CSE's seeds with the paper's and with the authors' activation loss.
#   bash benchmarks/run_gslm_plus_seed.sh CODE_DIR SEED
# Two seeds side by side = two one-thread jobs (OMP_NUM_THREADS=1); per seed ~25 + 35 + 2 x 55 min.
# Outputs: runs/msrc/abl/frame_s<SEED>_r3, runs/msrc/occse_r3@s<SEED>, runs/msrc/gslm_occse@s<SEED>,
# runs/msrc/gslm_occse_authors@s<SEED>; logs under benchmarks/logs/{ablation,methods}/. Each step is
# skipped when its run already finished (its metrics/seeds.json exists); an unfinished one resumes.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
code="$1"; seed="$2"
cd "$repo"
done_run() { [[ -e "$1/metrics/seeds.json" && -e "$1/fingerprints/report.json" ]]; }
cam="runs/msrc/abl/frame_s${seed}_r3"
done_run "$cam" || bash benchmarks/run_ablation.sh "$code" "frame_s${seed}_r3" "--seed $seed"
# the OC-CSE run is named occse_r3 (it erases against the _r3 CAM run), so that it never takes the name, log or
# record of the recorded OC-CSE seeds (occse@s<SEED>, made against the first CAM runs, whose directories are gone)
occse="runs/msrc/occse_r3@s$seed"
done_run "$occse" || RUN_NAME=occse_r3 bash benchmarks/run_method_seed.sh "$code" occse "$seed" "$cam"
done_run "runs/msrc/gslm_occse@s$seed" || bash benchmarks/run_method_seed.sh "$code" gslm_occse "$seed" "$occse"
done_run "runs/msrc/gslm_occse_authors@s$seed" || RUN_NAME=gslm_occse_authors \
  bash benchmarks/run_method_seed.sh "$code" gslm_occse "$seed" "$occse" --method.loss_form authors

# Shared by run_rw_variant.sh and run_rw_stages.sh (sourced, not run): the hard-linked copy of a finished
# run that a random-walk variant writes into, without touching the original (stages write atomically).
#   rw_prepare SRC_RUN NAME   -> sets $out (runs/msrc/rw/NAME), $log (benchmarks/logs/rw/NAME.log), $seed
rw_prepare() {
  local src="$1" name="$2"
  out="$repo/runs/msrc/rw/$name"
  log="$repo/benchmarks/logs/rw/$name.log"
  mkdir -p "$repo/runs/msrc/rw" "$repo/benchmarks/logs/rw"
  if [[ ! -e "$out" ]]; then
    cp -al "$src" "$out"
    for d in logs; do  # written by libraries that may not replace files atomically: real copies
      [[ -d "$out/$d" ]] && { rm -rf "$out/$d"; cp -a "$src/$d" "$out/$d"; }
    done
    # the source run's report shows no random walk: drop it (and its fingerprint) so the variant
    # writes its own instead of stopping at a report made with affinity.enabled false
    rm -rf "$out/report" "$out/fingerprints/report.json" "$out/fingerprints/report.started.json"
  fi
  seed=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['seed'])" "$src/config.json")
}

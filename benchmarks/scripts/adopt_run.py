"""Record run fingerprints for a CAM run made before wsss wrote them (benchmark housekeeping).

    python benchmarks/scripts/adopt_run.py RUN_DIR --config configs/msrc/cam.yaml [--seed N]

The run's own record of what made it (``RUN_DIR/config.json``) is compared with the config, key by
key, for every stage whose outputs exist (train, infer, evaluate, refine); only when every key a
stage depends on is equal is that stage's fingerprint written (status done, chained like the
pipeline's), so that later runs can reuse the outputs (e.g. as the ``requires`` dependency of a
method). Any difference is printed and nothing is written. This trusts that the code that made the
run computed what the current code computes for those keys: use it only for runs made after the
last change that altered what those stages compute (for the MSRC baseline seeds of 2026-11-23,
the BatchNorm fix came first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsss.config import load_config
from wsss.fingerprint import read_fingerprint, stage_fingerprint, stage_keys, write_fingerprint
from wsss.stages import _infer_splits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--config", required=True)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--legacy-bn-mode", default=None, choices=["batch_stats"],
                   help="a config.json without model.bn_mode was made before the BatchNorm fix (commit d6880af): "
                        "its 'frozen' BN normalised by batch statistics, i.e. bn_mode batch_stats")
    a = p.parse_args(argv)
    run = Path(a.run)
    over = {"output_dir": str(run)}
    if a.seed is not None:
        over["seed"] = a.seed
    cur = load_config(a.config, over)
    rec = load_config(run / "config.json", {"output_dir": str(run)})
    if a.legacy_bn_mode and rec.model.bn_mode is None:
        rec.model.bn_mode = a.legacy_bn_mode
        print(f"{run}: config.json has no model.bn_mode (made before the BatchNorm fix): taken as {a.legacy_bn_mode}")
    outputs = {"train": run / "model.safetensors", "infer": run / "cams", "evaluate": run / "metrics/seeds.json",
               "refine": run / "metrics/pseudo.json"}
    prev = None
    for stage in ("train", "infer", "evaluate", "refine"):
        if not outputs[stage].exists():
            print(f"{run}: no {stage} outputs; stopping here")
            break
        k_cur, k_rec = stage_keys(cur, stage), stage_keys(rec, stage)
        diff = sorted(k for k in set(k_cur) | set(k_rec) if k_cur.get(k) != k_rec.get(k))
        if diff:
            for k in diff:
                print(f"{run}: {stage}: {k} = {k_rec.get(k)!r} in config.json, {k_cur.get(k)!r} in {a.config}")
            return 1
        have = read_fingerprint(run, stage)
        inputs = {"splits": _infer_splits(cur)} if stage == "infer" else {}
        fp = stage_fingerprint(cur, stage, inputs=inputs, previous=prev)
        if have is not None and have["hash"] != fp.hash:
            print(f"{run}: {stage} already has another fingerprint; leaving it")
            return 1
        write_fingerprint(run, fp, "done")
        prev = fp.hash
        print(f"{run}: {stage}: config.json matches on {len(k_cur)} keys; fingerprint written")
    return 0


if __name__ == "__main__":
    sys.exit(main())

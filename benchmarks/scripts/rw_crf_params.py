"""Dense CRF on a finished random-walk run's masks with other CRF parameters, without touching the run.

The pipeline's ``random_walk.crf`` writes one CRF form (``pseudo_rw_crf/``); this scores others on
the same walk scores (``<run>/rw/*.npz``) at the run's own background threshold (chosen on val for
the walk, ``metrics/pseudo_rw.json``), so the CRF form can be chosen on val (``--source cams``: the
same for the run's CAMs at its seed threshold, i.e. the refine stage's CRF pseudo masks on any split):

    python benchmarks/scripts/rw_crf_params.py RUN NAME '{iterations: 1, gt_prob: 0.9}' [--splits val train]

Masks go to ``/work/scratch/rw_crf/<run name>_<NAME>/<split>/`` (outside the run); the scores are
appended to ``benchmarks/results/rw_crf_params.json`` (key ``<run name>/<NAME>/<split>``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from wsss.config import load_config
from wsss.io import read_json, write_json
from wsss.refine.crf import CRFParams
from wsss.stages import crf_masks, layout_for

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("name", help="label of this CRF form (e.g. pnoc_1it_gt09)")
    ap.add_argument("crf", help="CRFParams mapping in YAML, e.g. '{iterations: 1, gt_prob: 0.9}'; '{}' = IRN's")
    ap.add_argument("--splits", nargs="+", default=["val", "train"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--source", choices=["rw", "cams"], default="rw",
                    help="cams: the CRF pseudo masks of the run's CAMs at its seed threshold (metrics/seeds.json) "
                         "instead of the walk's, e.g. to compare both on val")
    a = ap.parse_args()
    run = Path(a.run).resolve()
    params = CRFParams.from_dict(yaml.safe_load(a.crf) or {})
    thr = float(read_json(run / "metrics" / ("pseudo_rw.json" if a.source == "rw" else "seeds.json"))["threshold"])
    cfg = load_config(str(REPO / "configs/msrc/cam.yaml"), {"output_dir": str(run)})
    results_path = REPO / "benchmarks/results/rw_crf_params.json"
    results = read_json(results_path) if results_path.is_file() else {}
    for split in a.splits:
        layout = layout_for(cfg, split)
        out = Path("/work/scratch/rw_crf") / f"{run.name}_{a.name}" / split
        res = crf_masks(layout, run / a.source, out, threshold=thr, params=params, workers=a.workers, progress=False)
        if res is None:
            raise SystemExit(f"{layout.root}: split {split!r} has no ground-truth masks to score")
        keep = {k: res[k] for k in ("split", "num_images", "threshold", "miou", "precision", "recall", "m_under", "m_over")}
        keep.update(crf=params.to_dict(), run=str(run.relative_to(REPO)) if run.is_relative_to(REPO) else str(run))
        results[f"{run.name}/{a.name}/{split}"] = keep
        print(json.dumps({f"{run.name}/{a.name}/{split}": {k: keep[k] for k in ("miou", "precision", "recall", "threshold")}}))
    write_json(results_path, results)


if __name__ == "__main__":
    main()

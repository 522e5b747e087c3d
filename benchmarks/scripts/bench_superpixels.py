"""Time of CPN's superpixel preparation for the MSRC train split (issue 12).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scripts/bench_superpixels.py
           [--root ../shared/data/msrc21-voc] [--split train] [--workers 2] [--n-segments 200]
           [--out benchmarks/results/superpixels.json]

Builds wsss.data.superpixels.SuperpixelSource over the split with a fresh cache in a temporary
folder and times SuperpixelSource.prepare() twice: cold (SLIC for every image, in --workers
processes) and warm (everything cached: only the freshness checks). Also times load() of every
map from the cache, and SLIC of one image in this process (mean of 5 after a warm-up). Prints one JSON
object (and writes it to --out when given). The authors' per-crop SLIC + per-pixel loop took
1.45 s per image (CPN paper Sec. 4.2); the target here is < 30 s for MSRC's 354 train images
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "msrc21-voc"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-segments", type=int, default=200)
    ap.add_argument("--compactness", type=float, default=10.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import numpy as np
    import skimage

    from wsss.data.superpixels import SlicParams, SuperpixelSource, available_cores, slic_labels
    from wsss.data.voc import VOCLayout

    layout = VOCLayout(args.root, args.split, check_files=False)
    params = SlicParams(args.n_segments, args.compactness)
    with tempfile.TemporaryDirectory(prefix="wsss_sp_") as tmp:
        src = SuperpixelSource(layout, tmp, params, workers=args.workers)
        cold = src.prepare()
        warm = src.prepare()
        t = time.perf_counter()
        counts = [int(src.load(i).max()) + 1 for i in layout.ids]
        load_s = time.perf_counter() - t
        image = layout.image(layout.ids[0])
        slic_labels(image, params)  # warm-up: scikit-image's lazy imports
        t = time.perf_counter()
        for _ in range(5):
            slic_labels(image, params)
        one = (time.perf_counter() - t) / 5
        disk = sum(p.stat().st_size for p in Path(src.folder).glob("*.npy"))
    res = {
        "images": len(layout.ids),
        "split": args.split,
        "n_segments": args.n_segments,
        "compactness": args.compactness,
        "workers": cold["workers"],
        "available_cores": available_cores(),
        "cold_prepare_s": cold["seconds"],
        "cold_per_image_ms": round(1000 * cold["seconds"] / max(1, len(layout.ids)), 1),
        "warm_prepare_s": warm["seconds"],
        "warm_computed": warm["computed"],
        "load_all_s": round(load_s, 3),
        "one_image_slic_ms_in_process": round(1000 * one, 1),
        "superpixels_per_image": {"min": int(np.min(counts)), "mean": round(float(np.mean(counts)), 1),
                                  "max": int(np.max(counts))},
        "cache_bytes": disk,
        "target_s": 30.0,
        "under_target": cold["seconds"] < 30.0,
        "skimage": skimage.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Diagnostic (issue 10): how correct are the pair labels the boundary network would learn from,
per label source, on val (scored against the true pairs; no training).

    PYTHONPATH=src python benchmarks/scripts/rw_label_sources.py RUN_DIR THRESHOLD [OUT_JSON]

Sources, all from the run's val CAMs (``RUN_DIR/cams``):
- ``confident fg/bg``: IRN's two CRF passes (``confident_labels``) at a few threshold pairs;
- ``crf band b``: the CRF pseudo mask at the run's seed threshold (``dense_pseudo_mask``) with
  ``unsure_band(mask, b)`` (pixels within ``b`` px of a label change unsure), i.e. the affinity
  labels of ``affinity.label_source: pseudo``, ``affinity.label_band: b``.
Each label map is sampled onto the stride-4 grid (``stride4_labels``: pixel 4i, 4j), and scored
with ``pair_counts`` / ``pair_f1`` at IRN's training radius 10 against the ground truth sampled
the same way. Prints one line per source and writes ``OUT_JSON`` if given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from wsss.affinity.model import pair_counts, pair_f1, unsure_band  # noqa: E402
from wsss.data.voc import VOCLayout  # noqa: E402
from wsss.inference.store import cam_path, load_cam  # noqa: E402
from wsss.refine.pseudo import confident_labels, dense_pseudo_mask  # noqa: E402

RADIUS = 10


def grid(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64))[None, ::4, ::4].contiguous()


def main(argv: list[str]) -> int:
    run, thr = Path(argv[0]), float(argv[1])
    out_json = Path(argv[2]) if len(argv) > 2 else None
    lay = VOCLayout("../shared/data/msrc21-voc", "val")
    sources: dict[str, dict[str, int]] = {}
    coverage: dict[str, list[float]] = {}

    def add(name: str, labels: np.ndarray, gt: torch.Tensor) -> None:
        g = grid(labels)
        c = pair_counts(g, gt, RADIUS)
        acc = sources.setdefault(name, dict.fromkeys(c, 0))
        for k, v in c.items():
            acc[k] += v
        coverage.setdefault(name, []).append(float((g < 255).float().mean()))

    for i in lay.ids:
        rec = load_cam(cam_path(run / "cams", i))
        image = lay.image(i)
        gt = grid(lay.mask(i))
        for fg, bg in ((0.30, 0.05), (0.50, 0.20), (0.70, 0.05)):
            add(f"confident {fg:.2f}/{bg:.2f}", confident_labels(image, rec, fg, bg), gt)
        dense = dense_pseudo_mask(image, rec, thr)
        dense_t = torch.from_numpy(dense.astype(np.int64))
        for b in (0, 1, 3, 5, 9):
            add(f"crf band {b}", unsure_band(dense_t, b).numpy(), gt)
    result = {}
    for name, c in sources.items():
        s = pair_f1(c)
        result[name] = {**s, "coverage": 100 * float(np.mean(coverage[name])), "counts": c}
        print(f"{name:24s} coverage {result[name]['coverage']:5.1f}%  pos P/R {s['precision_pos']:5.1f}/{s['recall_pos']:5.1f}  "
              f"neg P/R {s['precision_neg']:5.1f}/{s['recall_neg']:5.1f}  pair F1 {s['f1']:5.1f}")
    if out_json:
        out_json.write_text(json.dumps({"run": str(run), "split": "val", "radius": RADIUS, "seed_threshold": thr,
                                        "sources": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

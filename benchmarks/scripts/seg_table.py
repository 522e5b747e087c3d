"""Markdown rows for benchmarks/segmentation.md from segmentation runs (issue 11).

    python benchmarks/scripts/seg_table.py NAME=RUN_DIR [NAME=RUN_DIR ...]

Per run: what the network was trained on (``segmentation/model.json`` source), the training masks'
own mIoU on train (``metrics/pseudo.json`` fixed threshold, or 100 for ground truth), val mIoU
single-scale / multi-scale + flip / + CRF (``metrics/segmentation.json``), the same on train when
recorded (``metrics/train_segmentation.json``) and the training time. Prints a table and writes
``benchmarks/results/segmentation.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _read(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.is_file() else None


def main(argv: list[str]) -> int:
    rows, out = [], {}
    for arg in argv:
        name, run = arg.split("=", 1)
        run = Path(run)
        meta = _read(run / "segmentation" / "model.json") or {}
        val = _read(run / "metrics" / "segmentation.json")
        tr = _read(run / "metrics" / "train_segmentation.json")
        pseudo = _read(run / "metrics" / "pseudo.json")
        src = meta.get("source", "?")
        masks = 100.0 if src == "gt" else (pseudo or {}).get("miou")
        v = (val or {}).get("variants", {})
        t = (tr or {}).get("variants", {})
        rec = {"run": str(run), "source": src, "train_masks_miou": masks,
               "val": {k: v[k]["miou"] for k in v}, "train": {k: t[k]["miou"] for k in t},
               "train_seconds": meta.get("train_seconds"), "epochs": meta.get("epochs"), "params": meta.get("params")}
        out[name] = rec
        f = lambda d, k: f"{d[k]:.1f}" if k in d else "–"  # noqa: E731
        rows.append(f"| {name} | {src} | {masks:.1f} | {f(rec['val'], 'single')} | {f(rec['val'], 'multiscale')} | "
                    f"{f(rec['val'], 'multiscale_crf')} | {f(rec['train'], 'multiscale')} | {rec['train_seconds']} |"
                    if masks is not None else f"| {name} | {src} | – | ... |")
    print("| run | trained on | training masks mIoU (train) | val single | val multi-scale + flip | val + CRF | train multi-scale + flip | train s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    res = REPO / "benchmarks" / "results" / "segmentation.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

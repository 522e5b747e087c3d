"""Montage of `wsss predict` overlays for benchmarks/segmentation.md (issue 11).

    python benchmarks/scripts/predict_montage.py PRED_DIR [--split-file ../shared/data/msrc21-voc/ImageSets/Segmentation/val.txt]
        [--extra resized_1000x700] [--out benchmarks/figures/predict_val.jpg]

Top row: the overlays of val images 0, 10, 20, 30 of the split file; bottom row: images 40, 50 and
the ``--extra`` overlay; each scaled to 200 px high. The output shows MSRC photographs (research
use only), so it is written locally and not committed (``.gitignore``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pred_dir")
    ap.add_argument("--split-file", default="../shared/data/msrc21-voc/ImageSets/Segmentation/val.txt")
    ap.add_argument("--extra", default="resized_1000x700")
    ap.add_argument("--out", default="benchmarks/figures/predict_val.jpg")
    args = ap.parse_args(argv)
    ids = [line.split()[0] for line in open(args.split_file) if line.strip()][:60:10]
    stems = ids + ([args.extra] if args.extra else [])
    tiles = []
    for stem in stems:
        t = Image.open(Path(args.pred_dir) / f"{stem}_overlay.jpg").convert("RGB")
        tiles.append(t.resize((int(t.width * 200 / t.height), 200)))
    rows = [tiles[:4], tiles[4:]]
    width = max(sum(t.width for t in r) + 10 * (len(r) - 1) for r in rows)
    canvas = Image.new("RGB", (width, 410), "white")
    for y, row in zip((0, 210), rows):
        x = 0
        for t in row:
            canvas.paste(t, (x, y))
            x += t.width + 10
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, quality=85)
    print(args.out, canvas.size)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

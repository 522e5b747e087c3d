"""Step-by-step comparison of two training runs' logged loss terms (Lightning CSV logs).

    python benchmarks/scripts/compare_train_logs.py A/logs/metrics.csv B/logs/metrics.csv \
        [--keys loss cls re_cls re cse noc] [--tol 5e-5]

Prints one line per logged step with ``A/B`` for each key and the largest absolute difference,
then ``identical`` (every shared key of every shared step within ``--tol``) or ``different``
(exit status 1). Used by ``benchmarks/run_pnoc_equivalence.sh`` (issue 9) to check that P-NOC
through the plug-in frame trains exactly as the pre-frame code.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path


def load(path: Path) -> dict[int, dict[str, float]]:
    """``{step: {key: value}}`` of the ``train/<key>`` columns of a Lightning CSV log.

    Raises:
        SystemExit: the file is missing or has no ``step`` column.
    """
    if not path.is_file():
        raise SystemExit(f"{path}: no such metrics file")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if rows and "step" not in rows[0]:
        raise SystemExit(f"{path}: no 'step' column")
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        vals = {k[6:]: float(v) for k, v in r.items() if k.startswith("train/") and v not in ("", None)}
        if vals:
            out.setdefault(int(r["step"]), {}).update(vals)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--keys", nargs="+", default=["loss", "cls", "re_cls", "re", "cse", "noc"])
    ap.add_argument("--tol", type=float, default=5e-5)
    args = ap.parse_args(argv)
    a, b = load(args.a), load(args.b)
    worst = 0.0
    for s in sorted(set(a) & set(b)):
        cells, diffs = [], []
        for k in args.keys:
            if k in a[s] and k in b[s]:
                cells.append(f"{k}={a[s][k]:.4f}/{b[s][k]:.4f}")
                diffs.append(abs(a[s][k] - b[s][k]))
        d = max(diffs, default=0.0)
        worst = max(worst, d)
        print(f"step {s}: " + " ".join(cells) + f"  max|diff| {d:.2e}")
    only = sorted(set(a) ^ set(b))
    if only:
        print(f"steps logged in one run only: {only}")
    same = worst <= args.tol and not math.isnan(worst) and bool(set(a) & set(b))
    print("identical" if same else f"different (max |diff| {worst:.3e} > {args.tol})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

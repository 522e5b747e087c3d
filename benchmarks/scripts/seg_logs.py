"""Segmentation results from the benchmark logs (issue 11), when the run directories are gone.

    python benchmarks/scripts/seg_logs.py GROUP:SEED=LOG [GROUP:SEED=LOG ...]

Each log is the console output of ``wsss segment`` (``benchmarks/logs/segmentation/*.log``); its
``[segmentation] <split>: mIoU single-scale A, multi-scale+flip B, +CRF C`` lines are read. Per
group: every seed's numbers and the mean ± sample std (ddof 1) per split and variant. Prints a
Markdown table and writes ``benchmarks/results/segmentation.json``.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\[segmentation\] (\w+): mIoU single-scale ([\d.]+), multi-scale\+flip ([\d.]+), \+CRF ([\d.]+)")
VARIANTS = ("single", "multiscale", "multiscale_crf")


def parse(log: Path) -> dict[str, dict[str, float]]:
    """``{split: {variant: mIoU}}`` from one log; ValueError naming the file when it has no result line."""
    out: dict[str, dict[str, float]] = {}
    for line in log.read_text(errors="replace").replace("\r", "\n").splitlines():
        m = LINE.match(line)
        if m:
            out[m.group(1)] = dict(zip(VARIANTS, map(float, m.groups()[1:])))
    if not out:
        raise ValueError(f"{log}: no '[segmentation] <split>: mIoU ...' line (run failed or unfinished?)")
    return out


def main(argv: list[str]) -> int:
    groups: dict[str, dict[str, dict]] = {}
    for arg in argv:
        key, log = arg.split("=", 1)
        group, seed = key.split(":", 1)
        groups.setdefault(group, {})[seed] = {"log": log, **parse(REPO / log if not Path(log).is_absolute() else Path(log))}
    res: dict[str, dict] = {}
    print("| run | seeds | split | single-scale | multi-scale + flip | + CRF |")
    print("|---|---|---|---|---|---|")
    for group, seeds in groups.items():
        res[group] = {"seeds": seeds, "mean": {}, "std": {}}
        for split in ("val", "train"):
            vals = {v: [s[split][v] for s in seeds.values() if split in s] for v in VARIANTS}
            if not vals["single"]:
                continue
            n = len(vals["single"])
            mean = {v: statistics.mean(x) for v, x in vals.items()}
            std = {v: statistics.stdev(x) if len(x) > 1 else None for v, x in vals.items()}
            res[group]["mean"][split], res[group]["std"][split] = mean, std
            cell = lambda v: f"{mean[v]:.1f}" + (f" ± {std[v]:.1f}" if std[v] is not None else "")  # noqa: E731
            print(f"| {group} | {n} ({', '.join(k for k, s in seeds.items() if split in s)}) | {split} | "
                  f"{cell('single')} | {cell('multiscale')} | {cell('multiscale_crf')} |")
    out = REPO / "benchmarks" / "results" / "segmentation.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

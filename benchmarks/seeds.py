"""Mean ± std over training seeds, and the rule that says whether a method beats another.

Usage: .venv/bin/python benchmarks/seeds.py --runs runs/msrc/abl --name ablation-cam [--baseline step_init]

Run directories named ``<recipe>`` (seed 0) and ``<recipe>@s<k>`` (seed k) are one group. For
each group: n, mean and sample standard deviation (ddof 1) of train seed mIoU (fixed threshold
chosen on val, and swept on train: an oracle), CRF pseudo-mask mIoU, confident labels, val seed
mIoU (swept on val: what recipe choices are made on), m_under / m_over and train seconds.

Rule (issue 8): A beats B when mean(A) - mean(B) > 2 * max(std(A), std(B)); with fewer than two
seeds on either side there is no verdict.
Writes benchmarks/results/<name>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "src"))

from collect import collect_run  # noqa: E402
from wsss.io import write_json  # noqa: E402

KEYS = ["seed_miou_fixed", "seed_miou_swept", "pseudo_miou", "confident_miou", "val_seed_miou_swept",
        "m_under", "m_over", "precision", "recall", "train_seconds"]


def group_name(run_name: str) -> str:
    return run_name.split("@")[0]


def summarise(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0, "mean": None, "std": None, "values": []}
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return {"n": len(vals), "mean": statistics.fmean(vals), "std": std, "values": vals}


def verdict(a: dict, b: dict) -> str:
    """'beats', 'worse', 'within noise' or 'no verdict (n<2)' for A against B (one metric)."""
    if a["n"] < 2 or b["n"] < 2 or a["mean"] is None or b["mean"] is None:
        return "no verdict (n<2)"
    margin = 2 * max(a["std"], b["std"])
    d = a["mean"] - b["mean"]
    return "beats" if d > margin else "worse" if -d > margin else "within noise"


def collect_groups(runs_root: Path) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for run in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        r = collect_run(run)
        if r is not None:
            groups.setdefault(group_name(run.name), []).append({"name": run.name, **r})
    out = {}
    for g, members in groups.items():
        out[g] = {"runs": [m["name"] for m in members], "seeds": [m.get("seed") for m in members],
                  **{k: summarise([m.get(k) for m in members]) for k in KEYS},
                  "threshold_fixed": [m.get("threshold_fixed") for m in members]}
    return out


def fmt(s: dict, digits: int = 1) -> str:
    if s["mean"] is None:
        return "–"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--baseline", default=None)
    args = ap.parse_args()
    groups = collect_groups(Path(args.runs))
    base = groups.get(args.baseline) if args.baseline else None
    for g in groups.values():
        if base is not None:
            g["vs_baseline"] = {k: {"delta": (g[k]["mean"] - base[k]["mean"]) if g[k]["mean"] is not None and base[k]["mean"] is not None else None,
                                    "verdict": verdict(g[k], base[k])} for k in ("seed_miou_fixed", "seed_miou_swept", "pseudo_miou", "val_seed_miou_swept")}
    write_json(REPO / "benchmarks" / "results" / f"{args.name}.json", {"runs_root": args.runs, "baseline": args.baseline, "groups": groups})
    print("| recipe | seeds | val seed mIoU (swept on val) | train seed mIoU fixed | train seed mIoU swept | CRF pseudo mIoU | confident mIoU | m_under | m_over | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, g in groups.items():
        print(f"| {name} | {g['seed_miou_fixed']['n']} | {fmt(g['val_seed_miou_swept'])} | {fmt(g['seed_miou_fixed'])} | {fmt(g['seed_miou_swept'])} | "
              f"{fmt(g['pseudo_miou'])} | {fmt(g['confident_miou'])} | {fmt(g['m_under'], 3)} | {fmt(g['m_over'], 3)} | {fmt(g['train_seconds'], 0)} |")


if __name__ == "__main__":
    main()

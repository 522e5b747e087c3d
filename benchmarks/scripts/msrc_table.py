"""benchmarks/msrc.md: every method on the current CAM recipe, mean ± std over training seeds (issue 8).

    python benchmarks/scripts/msrc_table.py cam=RUN[,RUN...] poc=RUN,RUN,RUN ... [--baseline cam]

Each argument names a method row and its run directories, one per training seed (``runs/msrc/...``);
a run whose directory is gone is read from its record (``results/run_records/<name>.json``, written by
``collect.recorded_run`` whenever the run was collected).
Per row: n seeds, mean ± sample std (ddof 1) of the train seed mIoU at the fixed threshold (chosen
on val) and swept (an oracle), CRF pseudo-mask mIoU, m_under / m_over, training seconds; the delta
against the baseline row with the verdict of the 2-sigma rule (``benchmarks/seeds.py``: A beats B
when mean(A) - mean(B) > 2 * max(std(A), std(B)); fewer than two seeds on either side: no verdict);
the paper's VOC 2012 train delta over its own CAM baseline beside it (``PAPER``). Writes
``benchmarks/results/msrc_seeds.json`` and prints the Markdown table body.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from collect import recorded_run  # noqa: E402
from seeds import KEYS, fmt, summarise, verdict  # noqa: E402

#: the paper's seed-mIoU delta over its CAM baseline on VOC 2012 train, and where it is printed
PAPER = {
    "cam": ("0", "baseline"),
    "puzzle": ("+7.0", "P-NOC Table 2, RS269 + TTA: CAM 53.9 -> P 60.9"),
    "occse": ("–", "OC-CSE's own seed delta is not in the five papers"),
    "poc": ("+7.9", "P-NOC Table 2: CAM 53.9 -> P-OC+LS 61.8"),
    "pnoc": ("+9.7", "P-NOC Table 2: CAM 53.9 -> P-NOC+LS 63.6"),
    "pnoc_authors": ("+9.7", "as P-NOC (the authors' noc objective is what they ran)"),
    "gslm": ("+18.9", "GSLM Table 4, ResNet-50: CAM 48.6 -> 67.5"),
    "gslm_authors": ("+18.9", "as GSLM (the authors' activation loss)"),
    "gslm_poc": ("+4.2 to +12.5", "GSLM Table 4 on IRN ... AdvCAM seeds"),
    "gslm_occse": ("+4.2 to +12.5", "GSLM Table 4 on IRN ... AdvCAM seeds (OC-CSE is not in it)"),
    "gslm_occse_authors": ("+4.2 to +12.5", "as GSLM+ on OC-CSE (the authors' activation loss)"),
    "cpn": ("+9.6", "CPN Table 1, multi-scale: baseline 47.84 -> 57.43"),
    "cpn_rawcam": ("+9.6", "as CPN (the same networks, scored on the classifier's raw CAM: the MSRC recipe by val)"),
}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", nargs="+", help="NAME=RUN[,RUN...]")
    ap.add_argument("--baseline", default="cam")
    args = ap.parse_args(argv)
    groups: dict[str, dict] = {}
    for spec in args.rows:
        name, runs = spec.split("=", 1)
        members = []
        for r in runs.split(","):
            rec = recorded_run(Path(r))
            if rec is None:
                print(f"msrc_table: {r}: no metrics/seeds.json and no record in results/run_records (run unfinished?); skipped",
                      file=sys.stderr)
                continue
            members.append(rec)
        groups[name] = {"runs": [m["run"] for m in members], "seeds": [m.get("seed") for m in members],
                        **{k: summarise([m.get(k) for m in members]) for k in KEYS}}
    base = groups.get(args.baseline)
    lines = []
    for name, g in groups.items():
        def delta(key: str) -> str:
            if base is None or name == args.baseline or g[key]["mean"] is None or base[key]["mean"] is None:
                return "–"
            d = g[key]["mean"] - base[key]["mean"]
            v = verdict(g[key], base[key])
            g.setdefault("vs_baseline", {})[key] = {"delta": d, "verdict": v}
            return f"{d:+.1f} ({v})"
        ratio = (g["train_seconds"]["mean"] / base["train_seconds"]["mean"]
                 if base and g["train_seconds"]["mean"] and base["train_seconds"]["mean"] else None)
        g["time_ratio"] = ratio
        paper = PAPER.get(name, ("?", ""))
        lines.append(
            f"| {name} | {g['seed_miou_fixed']['n']} | {fmt(g['seed_miou_fixed'])} | {fmt(g['seed_miou_swept'])} | "
            f"{delta('seed_miou_fixed')} | {fmt(g['pseudo_miou'])} | {delta('pseudo_miou')} | {paper[0]} | "
            f"{fmt(g['m_under'], 2)} | {fmt(g['m_over'], 2)} | {fmt(g['train_seconds'], 0)} | "
            f"{'–' if ratio is None else f'{ratio:.2f}'} |")
    print("| method | seeds | seed mIoU fixed (thr from val) | swept (oracle) | Δ fixed vs CAM (2σ verdict) | "
          "CRF pseudo mIoU | Δ pseudo vs CAM (2σ verdict) | paper's VOC Δ seed | m_under | m_over | train s | time ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    out = REPO / "benchmarks" / "results" / "msrc_seeds.json"
    out.write_text(json.dumps({"baseline": args.baseline, "paper": PAPER, "groups": groups}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

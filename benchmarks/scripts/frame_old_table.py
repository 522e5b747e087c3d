"""Issue 9, must-show 1: GSLM (rounds), P-NOC (two optimisers) and the CAM baseline through the
plug-in frame against their pre-frame records, on the recipe those records were made with.

    python benchmarks/scripts/frame_old_table.py [--root runs/msrc/frame_old]

Reads the runs of ``benchmarks/run_frame_old.sh`` (``<root>/gslm``, its dependency
``<root>/gslm/requires/seed`` = the old-recipe CAM, ``<root>/pnoc``) with ``collect.recorded_run`` (a run whose directory is gone: its record in ``results/run_records``)
and the pre-frame records in ``results/msrc-old-recipe.json`` (rows ``cam``, ``cam_seed1``,
``gslm``, ``pnoc``; one seed each, 2026-11-22/23). Prints a Markdown table of seed mIoU fixed /
swept, CRF pseudo mIoU, m_under / m_over and the method's delta over the CAM run it was trained on
(before and through the frame), and writes ``results/frame_old.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from collect import recorded_run  # noqa: E402

KEYS = ("seed_miou_fixed", "seed_miou_swept", "pseudo_miou", "m_under", "m_over", "train_seconds")


def _row(rec: dict | None) -> dict | None:
    return None if rec is None else {k: rec.get(k) for k in KEYS + ("threshold_fixed", "run")}


def _fmt(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(REPO / "runs" / "msrc" / "frame_old"))
    args = ap.parse_args(argv)
    root = Path(args.root)
    old = json.loads((REPO / "benchmarks" / "results" / "msrc-old-recipe.json").read_text())["runs"]
    # recorded_run: a run directory that is gone (a machine reset) is read from its record
    now = {"cam": recorded_run(root / "gslm" / "requires" / "seed"), "gslm": recorded_run(root / "gslm"),
           "pnoc": recorded_run(root / "pnoc"),
           # control: the pre-frame code (f302eb3) on the same OC, seed and recipe (run_pnoc_precode.sh)
           "pnoc_precode": recorded_run(root / "pnoc_precode"),
           # the frame after the noc BatchNorm fix (20db365), same OC (run_frame_old.sh, code 4ae8259)
           "pnoc_fixed": recorded_run(root / "pnoc_fixed")}
    path = REPO / "benchmarks" / "results" / "frame_old.json"
    out: dict = {"before": {}, "frame": {}, "delta_vs_cam": {}}
    for name in ("cam", "cam_seed1", "gslm", "pnoc"):
        if name in old:
            out["before"][name] = _row(old[name])
    for name, rec in now.items():
        out["frame"][name] = _row(rec)
    # each method against the CAM run it was trained on / compared with (the old cam row: seed 0)
    for where, cam_name in (("before", "cam"), ("frame", "cam")):
        cam = out[where].get(cam_name)
        for m in ("gslm", "pnoc", "pnoc_precode", "pnoc_fixed"):
            rec = out[where].get(m)
            if cam and rec:
                out["delta_vs_cam"].setdefault(m, {})[where] = {
                    k: round(rec[k] - cam[k], 2) for k in ("seed_miou_fixed", "seed_miou_swept", "pseudo_miou")}
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("| run | when | seed mIoU fixed (thr) | swept | CRF pseudo mIoU | Δ vs its CAM (fixed / swept / CRF) | m_under / m_over | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("cam", "cam_seed1", "gslm", "pnoc", "pnoc_precode", "pnoc_fixed"):
        for where in ("before", "frame"):
            r = out[where].get(name)
            if not r:
                continue
            d = out["delta_vs_cam"].get(name, {}).get(where)
            dtxt = "–" if d is None else " / ".join(f"{d[k]:+.1f}" for k in ("seed_miou_fixed", "seed_miou_swept", "pseudo_miou"))
            when = ("pre-frame record" if where == "before" else
                    "pre-frame code f302eb3, the frame run's OC (control)" if name == "pnoc_precode" else
                    "through the frame, noc BatchNorm frozen (20db365), same OC" if name == "pnoc_fixed" else "through the frame")
            print(f"| {name} | {when} | {_fmt(r['seed_miou_fixed'])} ({_fmt(r['threshold_fixed'], 2)}) | "
                  f"{_fmt(r['seed_miou_swept'])} | {_fmt(r['pseudo_miou'])} | {dtxt} | "
                  f"{_fmt(r['m_under'], 2)} / {_fmt(r['m_over'], 2)} | {_fmt(r['train_seconds'], 0)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

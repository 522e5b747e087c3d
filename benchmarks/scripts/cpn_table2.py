"""CPN's Table 2 ablation order (and Fig. 7's grid patches) on MSRC, one training seed per row (issue 12).

    python benchmarks/scripts/cpn_table2.py [--seed 0]

Rows: the CAM baseline (``runs/msrc/abl/frame_s<seed>``), the rows ``run_cpn_table2.sh`` trains
(``runs/msrc/cpn_<row>@s<seed>``) and full CPN (``runs/msrc/cpn@s<seed>``); a run whose directory is
gone is read from its record (``results/run_records/``, ``collect.recorded_run``). Beside each row
the paper's VOC 2012 train seed mIoU (Table 2, multi-scale, background threshold swept: compare it
with the *swept* column) and the change from the row above on MSRC. Writes
``benchmarks/results/cpn_table2.json`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "src"))

from collect import recorded_run  # noqa: E402

from wsss.io import write_json  # noqa: E402

#: (row, what it adds, run directory pattern, paper's VOC train mIoU and where it is printed)
ROWS = [
    ("baseline", "L_cls only (the CAM baseline run)", "abl/frame_s{seed}", 47.84, "Table 2 row 1"),
    ("cpn_tcp_pcm", "+ L_tcp + PCM (w_cpcr 0, prcm_form none)", "cpn_tcp_pcm@s{seed}", 51.08, "Table 2 row 2"),
    ("cpn_cpcr_noohem", "+ L_cpcr without OHEM (ohem_ratio 1.0, prcm_form none)", "cpn_cpcr_noohem@s{seed}", 55.71, "Table 2 row 3"),
    ("cpn_cpcr_ohem", "+ OHEM top 20 % (prcm_form none)", "cpn_cpcr_ohem@s{seed}", 56.58, "Table 2 row 4"),
    ("cpn", "+ PRCM = full CPN, superpixel patches S_N 200", "cpn@s{seed}", 57.43, "Table 2 row 5"),
    ("cpn_grid", "full CPN with grid patches K = {56, 112} at 448 (scaled to the crop)", "cpn_grid@s{seed}", 57.07, "Fig. 7"),
]
KEYS = ("val_seed_miou_swept", "seed_miou_fixed", "seed_miou_swept", "pseudo_miou", "precision", "recall", "m_under",
        "m_over", "train_seconds")


def _f(v, d=1):
    return "–" if v is None else f"{v:.{d}f}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out, prev = {}, None
    lines = ["| row | adds | paper VOC (swept) | sweep | val seed (swept on val) | train seed fixed (thr) | swept | Δ swept vs row above "
             "| CRF pseudo | precision / recall | m_under / m_over | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, adds, pattern, paper, where in ROWS:
        # a row re-scored with the wider background sweep (``<row>_sw95@s<seed>``: evaluate + refine again with
        # evaluation.sweep [0, 0.95, 0.01], the trained network and CAMs hard-linked) is preferred: with the
        # shared 0-0.6 sweep, over-activated rows stop at its edge
        plain = REPO / "runs" / "msrc" / pattern.format(seed=a.seed)
        wide = plain.with_name(plain.name.replace("@", "_sw95@")) if "@" in plain.name else None
        rec = recorded_run(wide) if wide is not None else None
        run = wide if rec is not None else plain
        if rec is None:
            rec = recorded_run(plain)
        if rec is None:
            lines.append(f"| {name} | {adds} | {paper:.2f} | | not run | | | | | | | |")
            out[name] = None
            continue
        r = {k: rec.get(k) for k in KEYS}
        r.update(run=str(run.relative_to(REPO)), paper_voc=paper, paper_source=where, from_record=bool(rec.get("from_record")),
                 sweep_max=0.95 if run == wide else 0.6, threshold_fixed=rec.get("threshold_fixed"))
        delta = "–" if prev is None or name == "cpn_grid" else f"{r['seed_miou_swept'] - prev:+.1f}"
        if name == "cpn_grid" and out.get("cpn"):
            delta = f"{r['seed_miou_swept'] - out['cpn']['seed_miou_swept']:+.1f} vs superpixels"
        lines.append(f"| {name} | {adds} | {paper:.2f} | 0-{r['sweep_max']:g} | {_f(r['val_seed_miou_swept'])} | "
                     f"{_f(r['seed_miou_fixed'])} ({_f(r['threshold_fixed'], 2)}) | "
                     f"{_f(r['seed_miou_swept'])} | {delta} | {_f(r['pseudo_miou'])} | {_f(r['precision'])} / {_f(r['recall'])} | "
                     f"{_f(r['m_under'], 2)} / {_f(r['m_over'], 2)} | {_f(r['train_seconds'], 0)} |")
        out[name] = r
        if name != "cpn_grid":
            prev = r["seed_miou_swept"]
    write_json(REPO / "benchmarks" / "results" / "cpn_table2.json", {"seed": a.seed, "rows": out})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

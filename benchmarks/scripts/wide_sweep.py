"""Re-score finished runs' seeds with a wider background-threshold sweep (benchmark housekeeping).

    python benchmarks/scripts/wide_sweep.py RUN_DIR [RUN_DIR ...] [--stop 0.95] [--out JSON]

The MSRC configs sweep 0-0.6 (``evaluation.sweep``); over-activated maps (Puzzle, GSLM with the
authors' loss) choose a threshold at that upper end on val, so their fixed and swept seed mIoU may
understate what a wider sweep finds. This reads each run's stored CAMs (``<run>/cams``, train and
val), chooses the fixed threshold on val over ``[0, stop]`` and applies it to train, exactly as the
evaluate stage does (``wsss.evaluation.seeds.evaluate_seeds``), and prints it beside the run's
recorded ``metrics/seeds.json``. Nothing in the run is written; dense CRF is not re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wsss.config import load_config
from wsss.evaluation.seeds import best_threshold, evaluate_seeds
from wsss.io import read_json
from wsss.stages import _sweep, layout_for


def rescore(run: Path, stop: float, step: float = 0.01) -> dict:
    """Fixed (val-chosen) and swept seed mIoU of ``run``'s CAMs over the sweep [0, stop]; the splits and
    the sweep come from the run's own config (``layout_for``, ``_sweep``) with ``evaluation.sweep`` widened."""
    # the run's data and threshold split on the defaults (its config.json names requires relative to its code tree)
    recorded = read_json(run / "config.json")
    data = recorded["data"]
    src = recorded["evaluation"]["threshold_from"] or "val"
    cfg = load_config(None, {**{f"data.{k}": data[k] for k in ("root", "mask_dir", "limit", "check_files", "eval_split")},
                             "evaluation.sweep": [0.0, stop, step]})
    sweep = _sweep(cfg)
    rec = read_json(run / "metrics" / "seeds.json")
    val = evaluate_seeds(layout_for(cfg, src), run / "cams", rec["threshold"], sweep=sweep, progress=False)
    thr = best_threshold(val)
    train = evaluate_seeds(layout_for(cfg, cfg.data.eval_split), run / "cams", thr, sweep=sweep, progress=False)
    return {
        "run": str(run),
        "recorded": {"threshold": rec["threshold"], "fixed": rec["miou"], "swept": rec["best"]["miou"],
                     "swept_threshold": rec["best"]["threshold"]},
        "wide": {"sweep_stop": stop, "val_threshold": thr, "val_best": val["best"]["miou"], "fixed": train["miou"],
                 "swept": train["best"]["miou"], "swept_threshold": train["best"]["threshold"],
                 "m_under": train["m_under"], "m_over": train["m_over"]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--stop", type=float, default=0.95)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)
    rows = []
    for r in a.runs:
        row = rescore(Path(r), a.stop)
        rows.append(row)
        rec, w = row["recorded"], row["wide"]
        print(f"{r}: recorded {rec['fixed']:.2f} @ {rec['threshold']:.2f} / swept {rec['swept']:.2f} @ {rec['swept_threshold']:.2f}"
              f" -> sweep 0-{a.stop}: {w['fixed']:.2f} @ {w['val_threshold']:.2f} (val {w['val_best']:.2f})"
              f" / swept {w['swept']:.2f} @ {w['swept_threshold']:.2f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One-off (2026-12-07): per-run records (``results/run_records/<name>.json``) for runs whose directories
were lost with the machine, rebuilt from what was recorded of them.

    python benchmarks/scripts/records_from_table.py

1. ``results/msrc_seeds.json``: each group keeps, per key, the values of its runs in run order;
   a run's record is those values (``source``: the table). Per-class IoU is not kept there.
2. The runs of ``frame.md`` (``results/frame_old.json``, rows "frame"): each row is the record.
3. Runs measured only in a log (the table had not been remade): the ``[seeds]``, ``[pseudo]``
   and ``[confident]`` lines, and train seconds summed from the last progress-bar time of each
   epoch (within 0.5 % of ``model.json``'s on the runs that have both). m_under / m_over, precision
   and recall are not in a log: None.
Existing records are never overwritten.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from collect import RECORDS, _record_path  # noqa: E402
from wsss.io import write_json  # noqa: E402

#: run directory -> (log, seed) for runs recorded only in their logs
FROM_LOGS = {
    "runs/msrc/pnoc@s0": ("benchmarks/logs/methods/pnoc@s0.log", 0),
    "runs/msrc/puzzle_re1@s0": ("benchmarks/logs/methods/puzzle_re1@s0.log", 0),
}


def from_table() -> dict[str, dict]:
    table = json.loads((REPO / "benchmarks" / "results" / "msrc_seeds.json").read_text())
    out = {}
    for name, g in table["groups"].items():
        for i, run in enumerate(g["runs"]):
            rec = {"run": run, "method": name, "seed": g["seeds"][i], "source": "results/msrc_seeds.json"}
            for key, summary in g.items():
                if isinstance(summary, dict) and "values" in summary:
                    vals = summary["values"]
                    rec[key] = vals[i] if summary["n"] == len(g["runs"]) else None
            out[run] = rec
    return out


def from_frame_old() -> dict[str, dict]:
    rows = json.loads((REPO / "benchmarks" / "results" / "frame_old.json").read_text())["frame"]
    out = {}
    for row in rows.values():
        run, _, note = row["run"].partition(" (")
        out[run] = {**row, "run": run, "source": "results/frame_old.json" + (f" ({note}" if note else "")}
    return out


def train_seconds_from_log(text: str) -> float | None:
    last: dict[int, int] = {}
    for line in text.replace("\r", "\n").split("\n"):
        m = re.match(r"Epoch (\d+): 100%.*?\[(\d+):(\d+)(?::(\d+))?<", line)
        if m:
            a, b, c = m.group(2), m.group(3), m.group(4)
            last[int(m.group(1))] = int(a) * 60 + int(b) if c is None else int(a) * 3600 + int(b) * 60 + int(c)
    return float(sum(last.values())) if last else None


def from_log(run: str, log: str, seed: int) -> dict:
    text = (REPO / log).read_text(errors="replace")
    seeds = re.findall(r"^\[seeds\] train .*?mIoU ([\d.]+) at fixed background threshold ([\d.]+).*?swept best ([\d.]+) at ([\d.]+)",
                       text, re.M)[-1]
    pseudo = re.findall(r"^\[pseudo\] train .*?mIoU ([\d.]+)", text, re.M)[-1]
    conf = re.findall(r"^\[confident\] train .*?mIoU ([\d.]+).*?coverage ([\d.]+)%", text, re.M)
    return {"run": run, "method": Path(run).name.split("@")[0], "seed": seed, "source": log,
            "seed_miou_fixed": float(seeds[0]), "threshold_fixed": float(seeds[1]),
            "seed_miou_swept": float(seeds[2]), "threshold_swept": float(seeds[3]),
            "pseudo_miou": float(pseudo),
            "confident_miou": float(conf[-1][0]) if conf else None,
            "confident_coverage": float(conf[-1][1]) / 100 if conf else None,
            "m_under": None, "m_over": None, "precision": None, "recall": None,
            "train_seconds": train_seconds_from_log(text)}


def main() -> int:
    RECORDS.mkdir(parents=True, exist_ok=True)
    recs = {**from_table(), **from_frame_old()}
    for run, (log, seed) in FROM_LOGS.items():
        recs[run] = from_log(run, log, seed)
    for run, rec in recs.items():
        path = _record_path(REPO / run)
        if path.exists():
            print(f"kept {path.relative_to(REPO)}")
            continue
        write_json(path, rec)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Gather finished MSRC runs (one seed each, the recipe before 2026-11-23) into benchmarks/results/msrc-old-recipe.json and benchmarks/msrc-old-recipe.md; the current table is made by scripts/msrc_table.py.

Usage: .venv/bin/python benchmarks/collect.py [--runs runs/msrc] [--baseline cam]

Reads, for every run directory: metrics/seeds.json (fixed + swept seed mIoU, m_under,
m_over, per-class IoU), metrics/pseudo.json (dense-CRF pseudo masks), metrics/confident.json,
model.json (train_seconds) and metrics/timing.json (wall time of every stage). Every method is
thus measured the same way: same split, same evaluation code, same threshold protocol.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.io import atomic_write, write_json  # noqa: E402

ORDER = ["cam", "puzzle", "occse", "poc", "pnoc", "gslm", "gslm_poc", "gslm_pnoc"]


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def collect_run(run: Path) -> dict | None:
    seeds = _load(run / "metrics" / "seeds.json")
    if seeds is None:
        return None
    pseudo = _load(run / "metrics" / "pseudo.json") or {}
    conf = _load(run / "metrics" / "confident.json") or {}
    model = _load(run / "model.json") or {}
    timing = _load(run / "metrics" / "timing.json") or {}
    rounds = _load(run / "metrics" / "rounds.json")
    val = _load(run / "metrics" / "val_seeds.json") or {}
    proto = seeds.get("protocol", {})
    train_seconds = proto.get("total_train_seconds") or model.get("train_seconds") or timing.get("train")
    return {
        "run": str(run.relative_to(REPO)) if run.is_relative_to(REPO) else str(run),
        "method": (proto.get("method") or {}).get("name", run.name),
        "split": seeds["split"],
        "num_images": seeds["num_images"],
        "seed_miou_fixed": seeds["miou"],
        "threshold_fixed": seeds["threshold"],
        "threshold_source": seeds.get("threshold_source"),
        "seed_miou_swept": seeds["best"]["miou"],
        "threshold_swept": seeds["best"]["threshold"],
        "precision": seeds.get("precision"),
        "recall": seeds.get("recall"),
        "m_under": seeds.get("m_under"),
        "m_over": seeds.get("m_over"),
        "val_seed_miou_swept": (val.get("best") or {}).get("miou"),
        "val_threshold": (val.get("best") or {}).get("threshold"),
        "seed": proto.get("seed"),
        "pseudo_miou": pseudo.get("miou"),
        "confident_miou": conf.get("miou"),
        "confident_coverage": conf.get("coverage"),
        "per_class": seeds.get("per_class"),
        "pseudo_per_class": pseudo.get("per_class"),
        "train_seconds": train_seconds,
        "stage_seconds": timing,
        "epochs": proto.get("epochs"),
        "backbone": proto.get("backbone"),
        "crop": proto.get("crop"),
        "rounds": rounds.get("rounds") if isinstance(rounds, dict) else None,
    }


#: one JSON per measured run, so a table can be rebuilt after its run directory is gone (runs/ is
#: not committed, and a machine reset loses it): benchmarks/results/run_records/<run path under runs/msrc>.json
RECORDS = REPO / "benchmarks" / "results" / "run_records"


def _record_path(run: Path) -> Path:
    run = Path(run).resolve()
    root = (REPO / "runs" / "msrc").resolve()
    rel = run.relative_to(root) if run.is_relative_to(root) else Path(run.name)
    return RECORDS / (str(rel).replace("/", "__") + ".json")


def recorded_run(run: Path) -> dict | None:
    """``collect_run(run)``, saved as ``results/run_records/<name>.json``; when the directory has no
    metrics (gone with a machine), the record saved earlier, marked ``"from_record": true``.
    None when neither exists."""
    rec = collect_run(Path(run).resolve())
    path = _record_path(run)
    if rec is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, rec)
        return rec
    saved = _load(path)
    if saved is not None:
        saved["from_record"] = True
    return saved


def _f(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(REPO / "runs" / "msrc"))
    ap.add_argument("--baseline", default="cam")
    ap.add_argument("--name", default="msrc-old-recipe", help="output names: results/<name>.json and <name>.md")
    ap.add_argument("--fresh", action="store_true", help="drop recorded runs whose directories are gone")
    args = ap.parse_args()
    runs_root = Path(args.runs)
    results = {}
    for run in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        r = collect_run(run)
        if r is not None:
            results[run.name] = r
    # Runs measured earlier whose directories are gone (runs/ is not committed) keep their recorded
    # numbers, marked carried_over, unless --fresh is given.
    previous = _load(REPO / "benchmarks" / "results" / f"{args.name}.json")
    if previous and not args.fresh:
        for n, r in previous.get("runs", {}).items():
            if n not in results:
                r.setdefault("carried_over", True)
                results[n] = r
    names = sorted(results, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    base = results.get(args.baseline)
    for n in names:
        r = results[n]
        if r.get("carried_over"):
            continue  # its ratios and deltas were computed against the baseline run of its own time
        if base and base.get("train_seconds") and r.get("train_seconds"):
            r["train_time_ratio"] = round(r["train_seconds"] / base["train_seconds"], 2)
        if base:
            r["delta_seed_fixed"] = round(r["seed_miou_fixed"] - base["seed_miou_fixed"], 2)
            r["delta_seed_swept"] = round(r["seed_miou_swept"] - base["seed_miou_swept"], 2)
            if r.get("pseudo_miou") is not None and base.get("pseudo_miou") is not None:
                r["delta_pseudo"] = round(r["pseudo_miou"] - base["pseudo_miou"], 2)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores (shared CPU sandbox)"
    out = {"dataset": "MSRC-v2 (VOC layout), train split 354 images", "machine": machine, "runs": {n: results[n] for n in names}}
    write_json(REPO / "benchmarks" / "results" / f"{args.name}.json", out)

    lines = [
        "# MSRC-v2 benchmark, one seed per row (generated by `benchmarks/collect.py`; the 3-seed table is `msrc.md`)",
        "",
        f"Machine: {machine}. Split: train (354 images), evaluated with one confusion matrix over the split.",
        "Fixed threshold = best of a sweep on **val**, applied unchanged to train; swept = best on train itself (an oracle, labelled as such).",
        "",
        "| method | backbone | epochs | seed mIoU fixed (thr) | seed mIoU swept (thr) | Δ vs CAM (fixed / swept) | CRF pseudo mIoU | Δ pseudo | confident mIoU (coverage) | m_under | m_over | train s | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        r = results[n]
        mark = "*" if r.get("carried_over") else ""
        lines.append(
            f"| {n}{mark} | {r['backbone']} | {r['epochs']} | {_f(r['seed_miou_fixed'])} ({r['threshold_fixed']:.2f}) | "
            f"{_f(r['seed_miou_swept'])} ({r['threshold_swept']:.2f}) | "
            f"{_f(r.get('delta_seed_fixed'))} / {_f(r.get('delta_seed_swept'))} | {_f(r['pseudo_miou'])} | {_f(r.get('delta_pseudo'))} | "
            f"{_f(r['confident_miou'])} ({_f(r['confident_coverage'])}%) | {_f(r['m_under'], 3)} | {_f(r['m_over'], 3)} | "
            f"{_f(r['train_seconds'], 0)} | {_f(r.get('train_time_ratio'), 2)} |"
        )
    if any(results[n].get("carried_over") for n in names):
        lines += ["", "\\* measured in an earlier session (its run directory is not in this checkout); its "
                  "deltas and time ratio are against the baseline run of that session."]
    classes = list((base or results[names[0]])["per_class"]) if names else []
    if classes:
        lines += ["", "## Per-class seed IoU at the fixed threshold", "",
                  "| class | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(_f((results[n]['per_class'] or {}).get(c)) for n in names) + " |")
    lines += ["", "## Wall time per stage (s)", "", "| method | " + " | ".join(["train", "infer", "evaluate", "refine"]) + " |", "|---|---|---|---|---|"]
    for n in names:
        t = results[n]["stage_seconds"]
        lines.append(f"| {n} | " + " | ".join(_f(t.get(k), 0) for k in ("train", "infer", "evaluate", "refine")) + " |")
    with atomic_write(REPO / "benchmarks" / f"{args.name}.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

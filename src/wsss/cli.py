"""The ``wsss`` command.

    wsss pipeline --config configs/msrc/cam.yaml [--data.root DIR] [--data.limit N]
                  [--trainer.max_epochs N] [--output_dir DIR] [--any.dotted.key VALUE]
    wsss train | infer | evaluate | refine | report   (same options; one stage each)
    wsss data download --dataset voc12|sbd --dest DIR

Bad input (a corrupt image, a missing mask, an unlabelled id, an unknown config key)
stops the run with one line ``wsss: error: <file>: <what is wrong>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]

STAGES = {
    "pipeline": "run every stage in order (train, infer, evaluate, refine, report)",
    "train": "train the CAM network of the configured method",
    "infer": "multi-scale + flip CAM inference into <output_dir>/cams/",
    "evaluate": "seed mIoU at the fixed background threshold and swept, into metrics/seeds.json",
    "refine": "dense CRF pseudo masks and confident labels, evaluated (metrics/pseudo.json)",
    "report": "HTML report with metrics, plots and overlays (report/index.html)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsss", description="Weakly supervised semantic segmentation toolkit")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in STAGES.items():
        sp = sub.add_parser(name, help=help_, description=help_ + ". Any config key can be overridden as --section.key VALUE.")
        sp.add_argument("--config", help="YAML config file (configs/<dataset>/<method>.yaml)")
    dp = sub.add_parser("data", help="dataset utilities")
    dsub = dp.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="download and unpack PASCAL VOC 2012 / SBD (needs internet)")
    dl.add_argument("--dataset", choices=["voc12", "sbd"], required=True)
    dl.add_argument("--dest", required=True, help="folder to unpack into")
    return p


def _run(argv: list[str]) -> int:
    from wsss.config import load_config, parse_override_args

    args, rest = _parser().parse_known_args(argv)
    if args.command == "data":
        from wsss.data.download import main_download

        main_download(args.dataset, args.dest)
        return 0
    cfg = load_config(args.config, parse_override_args(rest))
    from wsss import pipeline

    stage = {
        "pipeline": pipeline.run_pipeline,
        "train": pipeline.stage_train,
        "infer": pipeline.stage_infer,
        "evaluate": pipeline.stage_evaluate,
        "refine": pipeline.stage_refine,
        "report": pipeline.stage_report,
    }[args.command]
    stage(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsss`` console script; returns the exit code."""
    from wsss.config import ConfigError

    try:
        from wsss.data.voc import DatasetError
    except ImportError:  # pragma: no cover
        DatasetError = ConfigError  # type: ignore[misc,assignment]
    argv = sys.argv[1:] if argv is None else argv
    # OpenMP threads that spin while waiting make a CPU run several times slower as soon as
    # anything else shares the cores (measured here: 9.5 s vs 4.9 s per training step with a
    # second process running). Passive waiting costs nothing measurable when alone. Must be set
    # before torch loads its OpenMP runtime; an explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return _run(argv)
    except (ConfigError, DatasetError, FileNotFoundError, ImportError) as exc:
        if os.environ.get("WSSS_TRACEBACK"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"wsss: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

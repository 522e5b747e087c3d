"""The ``wsss`` command.

    wsss pipeline --config configs/msrc/cam.yaml [--data.root DIR] [--data.limit N]
                  [--trainer.max_epochs N] [--output_dir DIR] [--any.dotted.key VALUE] [--overwrite]
    wsss train | infer | evaluate | refine | report   (same options; one stage each)
    wsss config --config X [--any.dotted.key VALUE]   (print the resolved config as YAML)
    wsss data download --dataset voc12|sbd --dest DIR
    wsss data coco --instances J --images DIR --dest DIR --split S   (COCO -> VOC layout)
    wsss data to-coco --root DIR --split S --output J                (VOC layout -> COCO JSON)

``--overwrite`` (every stage command) sets ``overwrite: true``: stages recompute outputs whose
run fingerprint changed instead of stopping.

Expected failures - a bad config (unknown key, wrong value type, missing base or ``requires``
file), bad data (a corrupt image, a missing mask, an unlabelled id, a decompression bomb), an
unknown method or a bad method parameter, a missing or corrupt file, a missing optional
dependency - stop the run with one line ``wsss: error: <file>: <what is wrong>`` and exit
code 2 (``WSSS_TRACEBACK=1`` re-raises them with the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "STAGES"]

#: stage subcommands -> help text (each runs one :mod:`wsss.pipeline` function)
STAGES = {
    "pipeline": "run every stage in order (train, infer, evaluate, refine, [affinity, rw, rw_crf, segment,] report)",
    "train": "train the CAM network of the configured method",
    "infer": "multi-scale + flip CAM inference into <output_dir>/cams/",
    "evaluate": "seed mIoU at the fixed background threshold and swept, into metrics/seeds.json",
    "refine": "dense CRF pseudo masks and confident labels, evaluated (metrics/pseudo.json)",
    "affinity": "affinity labels + IRN boundary network (affinity/), needs cams/",
    "rw": "random-walk pseudo masks (pseudo_rw/, metrics/pseudo_rw.json), then random_walk.crf's dense CRF "
          "(pseudo_rw_crf/) when set; needs affinity/",
    "segment": "DeepLabV3+ on the pseudo masks, evaluated on val (segmentation/, metrics/segmentation.json)",
    "report": "HTML report with metrics, plots and overlays (report/index.html)",
}

_OVERRIDES = "Any config key can be overridden as --section.key VALUE (YAML-parsed)."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsss", description="Weakly supervised semantic segmentation toolkit")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in STAGES.items():
        sp = sub.add_parser(name, help=help_, description=f"{help_}. {_OVERRIDES}")
        sp.add_argument("--config", help="YAML config file (configs/<dataset>/<method>.yaml)")
        sp.add_argument("--overwrite", action="store_true",
                        help="recompute outputs whose run fingerprint changed instead of stopping (sets overwrite: true)")
    cp = sub.add_parser("config", help="print the resolved config (bases merged, overrides applied) as YAML",
                        description=f"Print the resolved config as YAML. {_OVERRIDES}")
    cp.add_argument("--config", help="YAML config file (none: the defaults)")
    cp.add_argument("--overwrite", action="store_true", help="show the config with overwrite: true")
    pp = sub.add_parser("predict", help="segment images with a run's trained segmentation model",
                        description="Write <stem>.png (VOC palette) and <stem>_overlay.jpg per image; any image size.")
    from wsss.segmentation.predict import add_predict_arguments

    add_predict_arguments(pp)
    dp = sub.add_parser("data", help="dataset utilities")
    dsub = dp.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="download and unpack PASCAL VOC 2012 / SBD (needs internet)")
    dl.add_argument("--dataset", choices=["voc12", "sbd"], required=True)
    dl.add_argument("--dest", required=True, help="folder to unpack into")
    dl.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a download fails (default 60)")
    dc = dsub.add_parser("coco", help="convert a COCO instances JSON (e.g. instances_train2014.json) to a VOC-layout folder")
    dc.add_argument("--instances", required=True, help="COCO instances JSON")
    dc.add_argument("--images", required=True, help="folder of the images named by file_name (e.g. train2014/)")
    dc.add_argument("--dest", required=True, help="VOC-layout folder to write (several splits may share it)")
    dc.add_argument("--split", required=True, help="split name to write, e.g. train or val")
    dc.add_argument("--overlap", choices=["ignore", "larger_first"], default="ignore",
                    help="pixels of instances of different classes: 255 (default) or the smaller instance wins")
    dc.add_argument("--limit", type=int, default=None, help="first N images only (by COCO image id)")
    tc = dsub.add_parser("to-coco", help="write a COCO instances JSON for a VOC-layout split with masks")
    tc.add_argument("--root", required=True, help="VOC-layout dataset folder")
    tc.add_argument("--split", required=True)
    tc.add_argument("--output", required=True, help="JSON file to write")
    tc.add_argument("--limit", type=int, default=None, help="first N ids of the split only")
    return p


def _check_method(cfg) -> None:
    """Unknown ``method.name`` -> ValueError naming the config file (before any work starts)."""
    from wsss.methods import METHODS

    if cfg.method_name not in METHODS:
        where = cfg.source or "config"
        raise ValueError(f"{where}: method.name: unknown method '{cfg.method_name}'; known methods: {sorted(METHODS)}")


def _run(argv: list[str]) -> int:
    from wsss.config import dump_config, load_config, parse_override_args

    args, rest = _parser().parse_known_args(argv)
    if args.command == "data":
        if rest:
            raise ValueError(f"command line: unexpected argument(s) {rest}")
        if args.data_command == "coco":
            from wsss.data.coco import coco_to_voc_layout

            dest = coco_to_voc_layout(args.instances, args.images, args.dest, args.split, overlap=args.overlap, limit=args.limit)
            print(f"[data] {dest}: split {args.split!r} written (VOC layout)")
            return 0
        if args.data_command == "to-coco":
            from wsss.data.coco import voc_to_coco
            from wsss.data.voc import VOCLayout

            data = voc_to_coco(VOCLayout(args.root, args.split, limit=args.limit), args.output)
            print(f"[data] {args.output}: {len(data['images'])} images, {len(data['annotations'])} annotations")
            return 0
        from wsss.data.download import main_download

        main_download(args.dataset, args.dest, timeout=args.timeout)
        return 0
    if args.command == "predict":
        if rest:
            raise ValueError(f"command line: unexpected argument(s) {rest}")
        from wsss.segmentation.predict import run_predict

        return run_predict(args)
    overrides = parse_override_args(rest)
    if args.overwrite:
        overrides["overwrite"] = True
    cfg = load_config(args.config, overrides)
    _check_method(cfg)
    if args.command == "config":
        sys.stdout.write(dump_config(cfg))
        return 0
    from wsss import pipeline

    if args.command != "pipeline":
        pipeline.resolve_requires(cfg, run=False)  # point at dependency runs without running them
    if args.command in ("affinity", "rw"):
        cfg.affinity.enabled = True  # asked for explicitly
    if args.command == "segment":
        cfg.segmentation = {**cfg.segmentation, "enabled": True}
    stage = {
        "pipeline": pipeline.run_pipeline,
        "train": pipeline.stage_train,
        "infer": pipeline.stage_infer,
        "evaluate": pipeline.stage_evaluate,
        "refine": pipeline.stage_refine,
        "affinity": pipeline.stage_affinity,
        "rw": lambda c: (pipeline.stage_random_walk(c), pipeline.stage_rw_crf(c)),
        "segment": pipeline.stage_segment,
        "report": pipeline.stage_report,
    }[args.command]
    stage(cfg)
    return 0


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types turned into ``wsss: error: ...`` (ConfigError is a ValueError)."""
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, ImportError]
    try:
        from wsss.data.voc import DatasetError

        errors.append(DatasetError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from PIL import Image

        errors.append(Image.DecompressionBombError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsss`` console script; returns the exit code.

    Returns:
        0 on success; 2 on an expected failure (ConfigError, DatasetError, ValueError,
        FileNotFoundError, ImportError, ``PIL.Image.DecompressionBombError``), after printing
        the first line of its message as ``wsss: error: <msg>`` to stderr. With
        ``WSSS_TRACEBACK=1`` in the environment the exception is re-raised instead.
        argparse usage errors exit with 2 through ``SystemExit`` as usual.
    """
    argv = sys.argv[1:] if argv is None else argv
    # OpenMP threads that spin while waiting make a CPU run several times slower as soon as
    # anything else shares the cores (measured here: 9.5 s vs 4.9 s per training step with a
    # second process running). Passive waiting costs nothing measurable when alone. Must be set
    # before torch loads its OpenMP runtime; an explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return _run(argv)
    except _expected_errors() as exc:
        if os.environ.get("WSSS_TRACEBACK"):
            raise
        text = str(exc).strip()
        msg = text.splitlines()[0] if text else type(exc).__name__
        print(f"wsss: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

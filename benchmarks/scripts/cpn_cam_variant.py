"""Score a trained CPN run's *raw* CAM (or its refined CAM with another sweep) without retraining.

    python benchmarks/scripts/cpn_cam_variant.py RUN_DIR OUT_DIR [--cam raw|refined] [--sweep-max 0.9]
        [--config configs/msrc/cpn.yaml] [--seed 0]

OUT_DIR gets hard links of RUN_DIR's trained model and fingerprints of the train stage only; then
the shared stages run there: inference with a net wrapper that sets ``inference_cam`` (the wrapper
enters the infer fingerprint), seed evaluation with the threshold from val over 0..``sweep-max``,
dense CRF pseudo masks. This separates what CPN's training does to the classifier's CAM from what
its PCM + PRCM refinement does at inference (issue 12 diagnostics).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from wsss.config import load_config, parse_override_args  # noqa: E402
from wsss.stages import stage_evaluate, stage_infer, stage_refine  # noqa: E402


def set_cam(net, which: str):
    """Net wrapper: the same network, forward returning the ``which`` CAM."""
    target = getattr(net, "net", net)
    target.inference_cam = which
    return net


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--cam", default="raw", choices=["raw", "refined"])
    ap.add_argument("--sweep-max", type=float, default=0.9)
    ap.add_argument("--config", default="configs/msrc/cpn.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides the run was trained with (YAML values), e.g. method.w_cpcr=0 for a Table 2 row")
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    (out / "fingerprints").mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "model.json", "config.json"):
        if not (out / f).exists():
            os.link(run / f, out / f)
    shutil.copy(run / "fingerprints" / "train.json", out / "fingerprints" / "train.json")
    extra = parse_override_args([f"--{kv}" for kv in args.set])  # the CLI's own --key=value parsing
    cfg = load_config(args.config, {"output_dir": str(out), "seed": args.seed,
                                    "evaluation.sweep": [0.0, args.sweep_max, 0.01], **extra})
    stage_infer(cfg, net_wrapper=partial(set_cam, which=args.cam))
    stage_evaluate(cfg)
    stage_refine(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

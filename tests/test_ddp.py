"""Scale-out: the smoke pipeline under Lightning DDP with 2 CPU processes (gloo) writes the same
outputs as with one, and inference splits the images across ranks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.cli import main
from wsss.inference.tta import infer_split
from wsss.io import read_json

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs/msrc/cam.yaml")
# 8 MSRC images per split, 1 epoch, 64 px crops, one TTA scale without flip
SMOKE = ["--data.limit", "8", "--trainer.max_epochs", "1", "--data.crop_size", "64", "--data.resize_long", "[64, 96]",
         "--data.batch_size", "2", "--data.num_workers", "0", "--inference.scales", "[1.0]", "--inference.flip", "false",
         "--refine.workers", "1", "--refine.confident", "false", "--report.num_samples", "2",
         "--trainer.accelerator", "cpu"]


def _outputs(run: Path) -> dict:
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()
                   and p.relative_to(run).parts[0] not in ("logs", "checkpoints"))
    keys = {f: sorted(read_json(run / f)) for f in files if f.startswith("metrics/") and f.endswith(".json")}
    return {"files": files, "metric_keys": keys}


def test_ddp_two_cpu_processes_write_the_same_outputs_as_one(msrc_root, tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, "-m", "wsss.cli", "pipeline", "--config", CFG, "--data.root", str(msrc_root),
           "--output_dir", str(ddp), *SMOKE, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stderr + done.stdout
    assert main(["pipeline", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(single), *SMOKE,
                 "--trainer.devices", "1"]) == 0
    a, b = _outputs(ddp), _outputs(single)
    assert a == b
    ids = [i for s in ("train", "val") for i in (msrc_root / f"ImageSets/Segmentation/{s}.txt").read_text().split()[:8]]
    assert sorted(f"cams/{i}.npz" for i in ids) == [f for f in a["files"] if f.startswith("cams/")]
    assert read_json(ddp / "model.json")["world_size"] == 2 and read_json(single / "model.json")["world_size"] == 1
    # each rank inferred half of every split (two progress bars of 4 images per split)
    totals = re.findall(r"CAMs (?:train|val):\s+\d+%\|[^|]*\|\s*\d+/(\d+)", done.stderr + done.stdout)
    assert totals and set(totals) == {"4"}, totals
    for stage in ("train", "infer", "evaluate", "refine", "report"):
        assert (ddp / "fingerprints" / f"{stage}.json").is_file()


class _Layout:
    split = "toy"

    def __init__(self, n: int):
        self.ids = [f"im{i}" for i in range(n)]

    def label(self, image_id):
        return np.array([1.0, 0.0], np.float32)

    def image(self, image_id):
        return np.zeros((8, 12, 3), np.uint8)


class _Net(torch.nn.Module):
    def forward(self, x):
        cams = torch.ones(x.shape[0], 2, 2, 3)
        return cams.mean((2, 3)), cams


def test_infer_split_shards_ids_across_ranks(tmp_path):
    layout = _Layout(7)
    seen = []
    for rank in range(3):
        d = tmp_path / f"r{rank}"
        n = infer_split(_Net(), layout, d, scales=(1.0,), flip=False, channels_last=False, progress=False, rank=rank, world_size=3)
        names = sorted(p.stem for p in d.glob("*.npz"))
        assert n == len(names) and names == sorted(layout.ids[rank::3])
        seen += names
    assert sorted(seen) == sorted(layout.ids)  # disjoint and complete
    with pytest.raises(ValueError, match="rank 3 is not in"):
        infer_split(_Net(), layout, tmp_path / "x", rank=3, world_size=3)

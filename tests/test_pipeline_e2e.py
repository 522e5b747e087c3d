"""End to end on real MSRC photographs: CLI pipeline, output contract, bad input, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.cli import main
from wsss.io import read_index_png

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs/msrc/cam.yaml")
# Small but real: 8 MSRC images, short crops, two TTA scales, one epoch.
FAST = ["--data.limit", "8", "--trainer.max_epochs", "1", "--data.crop_size", "160", "--data.batch_size", "4",
        "--data.num_workers", "0", "--inference.scales", "[1.0, 0.5]", "--refine.workers", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, msrc_root):
    out = tmp_path_factory.mktemp("run")
    rc = main(["pipeline", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(out), *FAST])
    assert rc == 0
    return out


def test_pipeline_writes_the_output_contract(run_dir, msrc_root):
    seeds = json.loads((run_dir / "metrics/seeds.json").read_text())
    for key in ("miou", "threshold", "threshold_mode", "split", "num_images", "per_class", "precision", "recall",
                "m_under", "m_over", "sweep", "protocol", "best"):
        assert key in seeds, key
    assert seeds["threshold_mode"] == "fixed" and seeds["best"]["threshold_mode"] == "swept"
    assert seeds["num_images"] == 8 and seeds["split"] == "train"
    assert 0 <= seeds["miou"] <= 100
    assert seeds["best"]["miou"] == max(s["miou"] for s in seeds["sweep"])
    # fixed threshold was chosen on val and is the val sweep's best
    val = json.loads((run_dir / "metrics/val_seeds.json").read_text())
    assert val["split"] == "val" and seeds["threshold"] == val["best"]["threshold"]
    assert seeds["protocol"]["backbone"] == "efficientnet_lite0" and seeds["protocol"]["crf"] is True
    assert seeds["protocol"]["tta_scales"] == [1.0, 0.5]
    pseudo = json.loads((run_dir / "metrics/pseudo.json").read_text())
    assert 0 <= pseudo["miou"] <= 100 and pseudo["coverage"] == 100.0
    ids = (msrc_root / "ImageSets/Segmentation/train.txt").read_text().split()[:8]
    for i in ids:
        mask = read_index_png(run_dir / "pseudo" / f"{i}.png")
        cam = np.load(run_dir / "cams" / f"{i}.npz")
        assert mask.shape == cam["high_res"].shape[1:]
        assert set(np.unique(mask)) <= {0, *cam["keys"].tolist()}
    html = (run_dir / "report/index.html").read_text()
    assert "data:image/png;base64" in html and "swept" in html


def test_rerun_skips_finished_stages(run_dir, msrc_root, capsys):
    before = (run_dir / "model.safetensors").stat().st_mtime_ns
    cams_before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cams").iterdir()}
    rc = main(["pipeline", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(run_dir), *FAST])
    assert rc == 0
    assert "skipping training" in capsys.readouterr().out
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == before
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "cams").iterdir()} == cams_before


def _copy_subset(msrc_root: Path, dest: Path, n: int = 4) -> list[str]:
    ids = (msrc_root / "ImageSets/Segmentation/train.txt").read_text().split()[:n]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "ImageSets/Main"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(msrc_root / "classes.txt", dest / "classes.txt")
    for i in ids:
        shutil.copy(msrc_root / "JPEGImages" / f"{i}.jpg", dest / "JPEGImages")
        shutil.copy(msrc_root / "SegmentationClass" / f"{i}.png", dest / "SegmentationClass")
    (dest / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    for f in (msrc_root / "ImageSets/Main").glob("*_train.txt"):
        lines = [l for l in f.read_text().splitlines() if l.split()[0] in ids]
        (dest / "ImageSets/Main" / f.name).write_text("\n".join(lines) + "\n")
    return ids


def _cli_error(root: Path, out: Path, capsys) -> str:
    rc = main(["train", "--config", CFG, "--data.root", str(root), "--output_dir", str(out), *FAST])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_corrupt_image_missing_mask_unlabelled_id_each_stop_with_one_line(msrc_root, tmp_path, capsys):
    root = tmp_path / "voc"
    ids = _copy_subset(msrc_root, root)
    # corrupt image
    img = root / "JPEGImages" / f"{ids[1]}.jpg"
    data = img.read_bytes()
    img.write_bytes(data[:200])
    assert f"{ids[1]}.jpg" in _cli_error(root, tmp_path / "o1", capsys)
    img.write_bytes(data)
    # missing mask
    mask = root / "SegmentationClass" / f"{ids[2]}.png"
    mask.rename(tmp_path / "kept.png")
    assert f"{ids[2]}.png" in _cli_error(root, tmp_path / "o2", capsys)
    (tmp_path / "kept.png").rename(mask)
    # an id with no image-level label
    ids_file = root / "ImageSets/Segmentation/train.txt"
    shutil.copy(root / "JPEGImages" / f"{ids[0]}.jpg", root / "JPEGImages" / "extra.jpg")
    shutil.copy(root / "SegmentationClass" / f"{ids[0]}.png", root / "SegmentationClass" / "extra.png")
    ids_file.write_text(ids_file.read_text() + "extra\n")
    assert "extra" in _cli_error(root, tmp_path / "o3", capsys)
    # the dataset folder itself was never written to by the runs
    assert not any(p.name.endswith((".npz", ".ckpt")) for p in root.rglob("*"))


def test_unknown_config_key_is_one_line(capsys):
    rc = main(["train", "--config", CFG, "--data.rooot", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.rooot" in err and len(err.strip().splitlines()) == 1


def test_killed_training_resumes_from_last_checkpoint(msrc_root, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "wsss.cli", "train", "--config", CFG, "--data.root", str(msrc_root),
            "--output_dir", str(out), "--data.limit", "8", "--data.crop_size", "128", "--data.batch_size", "2",
            "--data.num_workers", "0", "--trainer.max_epochs", "6"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    step = None
    while step is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
        try:  # wait for a complete, loadable checkpoint, then kill at once
            step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        except Exception:
            step = None
    assert step is not None, "no checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "training finished before it could be killed"
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["epochs"] == 6 and meta["resumed"] is True
    # the resumed run continued the epoch count instead of starting over
    assert "Restored all states" in done.stderr
    assert meta["resumed_from_step"] >= step >= 4  # the finished epochs were not redone

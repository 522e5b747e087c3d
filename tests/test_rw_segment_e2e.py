"""Affinity -> random walk -> segmentation -> predict, end to end on real MSRC photographs (tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.io import read_index_png

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs/msrc/cam.yaml")
FAST = ["--data.limit", "8", "--trainer.max_epochs", "1", "--data.crop_size", "160", "--data.batch_size", "4",
        "--data.num_workers", "0", "--inference.scales", "[1.0]", "--refine.workers", "1",
        "--affinity.enabled", "true", "--affinity.epochs", "1",
        "--affinity.sweep_fg", "[0.3, 0.5]", "--affinity.sweep_bg", "[0.05, 0.1]", "--random_walk.steps", "16",
        "--segmentation.enabled", "true", "--segmentation.epochs", "1", "--segmentation.batch_size", "4",
        "--segmentation.crop_size", "160", "--segmentation.eval_scales", "[1.0, 0.5]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, msrc_root):
    out = tmp_path_factory.mktemp("rwseg")
    assert main(["pipeline", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(out), *FAST]) == 0
    return out


def test_affinity_and_random_walk_outputs(run_dir):
    labels = sorted((run_dir / "affinity/labels").glob("*.png"))
    assert len(labels) == 8
    meta = json.loads((run_dir / "affinity/model.json").read_text())
    # thresholds chosen on val: the grid pair with the best pair F1 (affinity.criterion default)
    sweep = json.loads((run_dir / "metrics/val_affinity_labels.json").read_text())
    assert [r["pair"] for r in sweep["sweep"]] == [[0.3, 0.05], [0.3, 0.1], [0.5, 0.05], [0.5, 0.1]]
    for r in sweep["sweep"]:
        s = r["pair_scores"]
        assert r["pair_f1"] == pytest.approx((s["f1_pos"] + s["f1_neg"]) / 2) and 0 <= r["pair_f1"] <= 100
    best = max(sweep["sweep"], key=lambda r: (r["pair_f1"], r["coverage"]))
    assert [meta["fg_threshold"], meta["bg_threshold"]] == best["pair"]
    rw = json.loads((run_dir / "metrics/pseudo_rw.json").read_text())
    assert rw["sweep"][-1]["threshold"] == pytest.approx(0.95)  # the walk's own sweep range
    val = json.loads((run_dir / "metrics/val_pseudo_rw.json").read_text())
    assert rw["threshold"] == val["best"]["threshold"] and rw["threshold_mode"] == "fixed"
    assert rw["split"] == "train" and rw["num_images"] == 8 and 0 <= rw["miou"] <= 100
    masks = sorted((run_dir / "pseudo_rw").glob("*.png"))
    assert len(masks) == 8
    m = read_index_png(masks[0])
    assert m.ndim == 2 and m.max() <= 16
    assert (run_dir / "fingerprints/rw.json").is_file() and (run_dir / "fingerprints/affinity.json").is_file()


def test_affinity_labels_from_pseudo_masks_with_a_band(run_dir, msrc_root, tmp_path):
    """affinity.label_source pseudo: the labels are the CRF pseudo masks with the unsure band."""
    import shutil

    import torch

    from wsss.affinity.model import unsure_band

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main(["affinity", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(copy), *FAST,
                 "--affinity.label_source", "pseudo", "--affinity.label_band", "3", "--overwrite"]) == 0
    pseudo = sorted((copy / "pseudo").glob("*.png"))
    assert len(pseudo) == 8
    for p in pseudo:
        want = unsure_band(torch.from_numpy(read_index_png(p).astype(np.int64)), 3).numpy()
        assert np.array_equal(read_index_png(copy / "affinity/labels" / p.name), want)
    meta = json.loads((copy / "affinity/model.json").read_text())
    assert meta["fg_threshold"] is None and "pseudo" in meta["threshold_source"]
    assert main(["affinity", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(copy), *FAST,
                 "--affinity.label_source", "nope", "--overwrite"]) != 0


def test_random_walk_then_crf_is_the_crf_of_the_walks_masks(run_dir, msrc_root, tmp_path):
    """random_walk.crf (P-NOC runners/3-rw.sh): pseudo_rw_crf/ = dense CRF of the walk's seed at the
    val-chosen threshold, for train (the eval split) and val; the walk's own masks are unchanged."""
    import shutil

    from wsss.data.voc import VOCLayout
    from wsss.inference.store import cam_path, load_cam
    from wsss.refine.crf import CRFParams
    from wsss.refine.pseudo import dense_pseudo_mask

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    walk_only = {p.name: read_index_png(p) for p in (copy / "pseudo_rw").glob("*.png")}
    scores = {p.name: p.stat().st_mtime_ns for p in (copy / "rw").glob("*.npz")}
    crf = "{iterations: 1, gt_prob: 0.9}"
    assert main(["rw", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(copy), *FAST,
                 "--random_walk.crf", crf, "--overwrite"]) == 0
    # its own stage (fingerprints/rw_crf.json): the walk is reused, not re-run
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "rw").glob("*.npz")} == scores
    assert json.loads((copy / "fingerprints/rw_crf.json").read_text())["keys"]["random_walk.crf.iterations"] == 1
    rw = json.loads((copy / "metrics/pseudo_rw.json").read_text())
    res = json.loads((copy / "metrics/pseudo_rw_crf.json").read_text())
    val = json.loads((copy / "metrics/val_pseudo_rw_crf.json").read_text())
    assert res["split"] == "train" and val["split"] == "val" and res["stage"] == "pseudo_rw_crf"
    assert res["threshold"] == rw["threshold"] == val["threshold"]
    assert res["crf"]["iterations"] == 1 and res["crf"]["gt_prob"] == 0.9 and 0 <= res["miou"] <= 100
    assert {p.name: read_index_png(p).tolist() for p in (copy / "pseudo_rw").glob("*.png")} == \
        {k: v.tolist() for k, v in walk_only.items()}
    layout = VOCLayout(msrc_root, "train", limit=8)
    params = CRFParams(iterations=1, gt_prob=0.9)
    masks = sorted((copy / "pseudo_rw_crf").glob("*.png"))
    assert len(masks) == 8 and len(list((copy / "val_pseudo_rw_crf").glob("*.png"))) == len(VOCLayout(msrc_root, "val", limit=8).ids)
    for p in masks[:3]:
        want = dense_pseudo_mask(np.asarray(layout.image(p.stem)), load_cam(cam_path(copy / "rw", p.stem)), rw["threshold"], params)
        assert np.array_equal(read_index_png(p), want)
    # a bad CRF key is a config error naming the key, and writes nothing new
    assert main(["rw", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(copy), *FAST,
                 "--random_walk.crf", "{iters: 1}", "--overwrite"]) != 0
    assert len(list((copy / "pseudo_rw_crf").glob("*.png"))) == 8 and (copy / "metrics/pseudo_rw_crf.json").is_file()
    # back to IRN's default (no CRF after the walk): the CRF masks go, the walk stays
    assert main(["rw", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(copy), *FAST,
                 "--overwrite"]) == 0
    assert not (copy / "pseudo_rw_crf").exists() and not (copy / "metrics/pseudo_rw_crf.json").exists()
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "rw").glob("*.npz")} == scores


def test_crf_masks_of_an_older_run_are_adopted_by_the_rw_crf_stage(run_dir, msrc_root, tmp_path):
    """A run made when the rw stage keyed random_walk.crf and wrote pseudo_rw_crf/ itself (no
    fingerprints/rw_crf.json) is reused as it is, not refused as outputs without a fingerprint."""
    import shutil

    from wsss.fingerprint import Fingerprint

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    args = ["rw", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(copy), *FAST,
            "--random_walk.crf", "{iterations: 1}"]
    assert main([*args, "--overwrite"]) == 0
    masks = {p.name: p.stat().st_mtime_ns for p in (copy / "pseudo_rw_crf").glob("*.png")}
    assert len(masks) == 8
    # make it look like the older layout: rw's fingerprint holds the key, no rw_crf fingerprint
    rec = json.loads((copy / "fingerprints/rw.json").read_text())
    rec["keys"]["random_walk.crf.iterations"] = 1
    rec["hash"] = Fingerprint("rw", rec["keys"], rec["inputs"], rec["previous"], rec["wsss_version"]).hash
    (copy / "fingerprints/rw.json").write_text(json.dumps(rec))
    (copy / "fingerprints/rw_crf.json").unlink()
    assert main(args) == 0  # no --overwrite: reused
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "pseudo_rw_crf").glob("*.png")} == masks
    assert json.loads((copy / "fingerprints/rw_crf.json").read_text())["previous"] == rec["hash"]
    # another CRF than the one recorded is not adopted: the usual one-line refusal
    assert main([*args[:-1], "{iterations: 2}"]) != 0


def test_segmentation_metrics_and_shippable_model(run_dir):
    seg = json.loads((run_dir / "metrics/segmentation.json").read_text())
    assert seg["split"] == "val" and set(seg["variants"]) == {"single", "multiscale", "multiscale_crf"}
    for v in seg["variants"].values():
        assert 0 <= v["miou"] <= 100 and "per_class" in v
    meta = json.loads((run_dir / "segmentation/model.json").read_text())
    assert meta["class_names"][0] == "background" and len(meta["class_names"]) == 17


def test_rerun_reuses_everything_and_predict_writes_masks(run_dir, msrc_root, tmp_path, capsys):
    before = (run_dir / "segmentation/model.safetensors").stat().st_mtime_ns
    assert main(["pipeline", "--config", CFG, "--data.root", str(msrc_root), "--output_dir", str(run_dir), *FAST]) == 0
    assert (run_dir / "segmentation/model.safetensors").stat().st_mtime_ns == before
    src = tmp_path / "in"
    src.mkdir()
    jpg = sorted((msrc_root / "JPEGImages").glob("*.jpg"))[0]
    (src / jpg.name).write_bytes(jpg.read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 1000, 3), dtype=np.uint8)).save(src / "odd.png")
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = main(["predict", "--run", str(run_dir), "--output", str(out), str(src)])
    assert rc != 0  # one file failed ...
    assert "broken.jpg" in capsys.readouterr().err
    odd = read_index_png(out / "odd.png")  # ... the others were written, at their own size
    assert odd.shape == (700, 1000)
    assert (out / f"{jpg.stem}.png").is_file() and (out / f"{jpg.stem}_overlay.jpg").is_file()

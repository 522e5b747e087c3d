"""Dense CRF, confident labels and pseudo-mask generation (synthetic + 3 real MSRC images)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from wsss.evaluation import ConfusionMatrix, cam_to_seed, evaluate_masks
from wsss.inference.store import CamRecord, cam_path, save_cam
from wsss.io import read_index_png
from wsss.refine import (
    CRFParams,
    confident_labels,
    crf_from_labels,
    crf_from_probs,
    dense_pseudo_mask,
    make_pseudo_masks,
)
import wsss.refine.pseudo as pseudo_mod

MSRC_IDS = ["12_20_s", "11_4_s", "15_2_s"]  # background + 1-2 classes each, little void


def _record(keys, high_res) -> CamRecord:
    hr = np.asarray(high_res, np.float32)
    k, h, w = hr.shape
    return CamRecord(np.asarray(keys, np.int64), hr, np.zeros((k, -(-h // 4), -(-w // 4)), np.float32))


def _two_region_image(h=40, w=60, edge=30, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float64)
    img[:, :edge] = (200, 40, 30)
    img[:, edge:] = (30, 40, 200)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- CRF


def test_crf_params_defaults_and_from_dict():
    p = CRFParams()
    assert (p.iterations, p.gt_prob, p.gaussian_sxy, p.gaussian_compat) == (10, 0.7, 3, 3)
    assert (p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat) == (50, 5, 10)
    g = CRFParams.from_dict({"gaussian_compat": 10})  # GSLM
    assert g.gaussian_compat == 10 and g.bilateral_sxy == 50
    assert CRFParams.from_dict(None) == p
    assert CRFParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown key"):
        CRFParams.from_dict({"bilateral_rgb": 3})
    with pytest.raises(ValueError, match="gt_prob"):
        CRFParams(gt_prob=1.0)


def test_crf_from_labels_fixes_stripe_along_colour_edge():
    img = _two_region_image()
    img.setflags(write=False)  # like a Pillow array: the CRF must copy it
    labels = np.zeros((40, 60), np.int64)
    labels[:, 34:] = 1  # true edge at column 30: columns 30..33 are mislabelled background
    out = crf_from_labels(img, labels, 2)
    assert out.shape == (40, 60) and out.dtype == np.int64
    stripe = out[:, 30:34]
    assert (stripe == 1).mean() >= 0.95  # the stripe is corrected
    assert (out[:, :30] == 0).mean() >= 0.99 and (out[:, 34:] == 1).mean() >= 0.99
    # with zero iterations the input comes back unchanged
    np.testing.assert_array_equal(crf_from_labels(img, labels, 2, CRFParams(iterations=0)), labels)
    with pytest.raises(ValueError, match="outside 0..1"):
        crf_from_labels(img, labels + 1, 2)
    with pytest.raises(ValueError, match="image size"):
        crf_from_labels(img[:, :50], labels, 2)


def test_crf_from_probs_marginals():
    img = _two_region_image()
    probs = np.zeros((2, 40, 60), np.float32)
    probs[0], probs[1] = 0.65, 0.35
    probs[0, :, 34:], probs[1, :, 34:] = 0.35, 0.65
    q = crf_from_probs(img, probs)
    assert q.shape == (2, 40, 60) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-4)
    assert (q.argmax(0)[:, 30:34] == 1).mean() >= 0.95
    assert (q.argmax(0)[:, :30] == 0).mean() >= 0.99


def test_crf_missing_module_error(monkeypatch):
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    img = _two_region_image()
    with pytest.raises(ImportError, match=r'pip install "wsss\[crf\]"'):
        crf_from_labels(img, np.zeros((40, 60), np.int64), 2)


# ----------------------------------------------------------------------------- pseudo masks


def _ramp_record():
    # two classes (keys 3 and 7) on a 20x30 image; class 3 ramps 0..0.6 left to right in the
    # top half, class 7 in the bottom half (the other class is 0 there)
    h, w = 20, 30
    ramp = np.round(np.linspace(0.0, 0.6, w), 3).astype(np.float32)
    hr = np.zeros((2, h, w), np.float32)
    hr[0, :10] = ramp
    hr[1, 10:] = ramp
    return _record([3, 7], hr)


def test_confident_labels_uncertain_band_without_crf_effect():
    rec = _ramp_record()
    img = np.full((20, 30, 3), 128, np.uint8)
    params = CRFParams(iterations=0)  # the CRF returns its input labels: no CRF effect
    conf = confident_labels(img, rec, 0.30, 0.05, params)
    m = rec.high_res.max(0)
    cls = np.where(np.arange(20)[:, None] < 10, 3, 7) * np.ones((1, 30), int)
    expected = np.where(m > 0.30, cls, np.where(m > 0.05, 255, 0))
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.uint8
    # 255 exactly where the two background thresholds disagree
    disagree = cam_to_seed(rec, 0.30) != cam_to_seed(rec, 0.05)
    np.testing.assert_array_equal(conf == 255, disagree)
    assert 0 < disagree.mean() < 1
    for rule in ("background", "ignore"):
        np.testing.assert_array_equal(confident_labels(img, rec, 0.30, 0.05, params, conflict=rule), expected)
    with pytest.raises(ValueError, match="bg_threshold"):
        confident_labels(img, rec, 0.05, 0.30, params)


def test_confident_labels_conflict_rules(monkeypatch):
    # Fake CRF outputs (local labels, 0 = bg, 1 = key 4) to exercise the combination rule:
    # pixel:      a  b  c  d
    # fg pass:    1  0  0  1
    # bg pass:    1  1  0  0     (d: fg says class, bg says background -> a conflict)
    outs = iter([np.array([[1, 0, 0, 1]]), np.array([[1, 1, 0, 0]])] * 3)
    monkeypatch.setattr(pseudo_mod, "crf_from_labels", lambda *a, **k: next(outs))
    rec = _record([4], np.zeros((1, 1, 4)))
    img = np.zeros((1, 4, 3), np.uint8)
    assert confident_labels(img, rec).tolist() == [[4, 255, 0, 4]]  # IRN code: keep fg's class
    assert confident_labels(img, rec, conflict="background").tolist() == [[4, 255, 0, 0]]
    assert confident_labels(img, rec, conflict="ignore").tolist() == [[4, 255, 0, 255]]


def test_dense_pseudo_mask_maps_keys_and_handles_empty_label():
    img = _two_region_image()
    hr = np.zeros((1, 40, 60), np.float32)
    hr[0, :, 34:] = 0.8  # CAM misses the stripe 30..33 of the blue object
    mask = dense_pseudo_mask(img, _record([9], hr), 0.15)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 9}
    assert (mask[:, 30:] == 9).mean() >= 0.97 and (mask[:, :30] == 0).mean() >= 0.99
    empty = _record([], np.zeros((0, 40, 60)))
    np.testing.assert_array_equal(dense_pseudo_mask(img, empty, 0.15), np.zeros((40, 60), np.uint8))
    assert (confident_labels(img, empty) == 0).all()
    with pytest.raises(ValueError, match="CAM size"):
        dense_pseudo_mask(img[:30], _record([9], hr), 0.15)


# ----------------------------------------------------------------------------- real MSRC images


class MsrcSubset:
    """A few ids of the real MSRC train split, with the dataset API (picklable)."""

    def __init__(self, root: Path, ids: list[str]):
        try:
            from wsss.data.voc import VOCLayout

            self._base = VOCLayout(root, "train", check_files=False)
        except ImportError:  # dataset module not written yet: minimal reader
            self._base = None
        self.root = Path(root)
        self.ids = list(ids)
        self.split = "train"
        names = (self.root / "classes.txt").read_text().split("\n")
        self.class_names = [n.strip() for n in names if n.strip()]
        self.num_classes = len(self.class_names) - 1

    def image(self, image_id):
        if self._base is not None:
            return self._base.image(image_id)
        from PIL import Image

        with Image.open(self.root / "JPEGImages" / f"{image_id}.jpg") as im:
            return np.array(im.convert("RGB"))

    def mask(self, image_id):
        if self._base is not None:
            return self._base.mask(image_id)
        return read_index_png(self.root / "SegmentationClass" / f"{image_id}.png")

    def label(self, image_id):
        v = np.zeros(self.num_classes, np.float32)
        for c in np.unique(self.mask(image_id)):
            if 0 < c < 255:
                v[c - 1] = 1
        return v


def _blurred_gt_cams(layout, cam_dir):
    """CAM = gt mask of each image class, blurred (sigma 10 px) and max-normalised.

    At background threshold 0.15 the seed spills over object boundaries (seed mIoU ~75 on the
    three images); the CRF pulls it back to the colour edges (~87)."""
    for i in layout.ids:
        gt = layout.mask(i)
        keys = np.nonzero(layout.label(i))[0] + 1
        hr = np.stack([gaussian_filter((gt == c).astype(np.float32), sigma=10) for c in keys])
        hr /= hr.reshape(len(keys), -1).max(1)[:, None, None] + 1e-5
        save_cam(cam_path(cam_dir, i), _record(keys, hr))


def test_make_pseudo_masks_on_msrc(msrc_root, tmp_path):
    layout = MsrcSubset(msrc_root, MSRC_IDS)
    cams, out = tmp_path / "cams", tmp_path / "pseudo"
    _blurred_gt_cams(layout, cams)

    written = make_pseudo_masks(layout, cams, out, kind="dense", threshold=0.15, workers=2, progress=False)
    assert written == MSRC_IDS
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == sorted(f"{i}.png" for i in MSRC_IDS)
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert make_pseudo_masks(layout, cams, out, kind="dense", threshold=0.15, workers=2, progress=False) == []
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes  # skipped, not rewritten

    r = evaluate_masks(layout, out, threshold=0.15, progress=False)
    assert r["num_images"] == 3 and r["coverage"] == 100.0
    assert r["miou"] > 80, r
    # the seeds themselves (no CRF): the CRF must improve them clearly
    from wsss.inference.store import load_cam

    acc = ConfusionMatrix(layout.num_classes + 1)
    for i in layout.ids:
        acc.update(layout.mask(i), cam_to_seed(load_cam(cam_path(cams, i)), 0.15))
    assert r["miou"] >= acc.scores(layout.class_names)["miou"] + 5

    # confident labels, in-process, on one image: an uncertain band exists, labelled pixels are accurate
    conf_dir = tmp_path / "conf"
    assert make_pseudo_masks(
        layout, cams, conf_dir, kind="confident", ids=MSRC_IDS[:1], workers=1, progress=False
    ) == MSRC_IDS[:1]
    conf = read_index_png(conf_dir / f"{MSRC_IDS[0]}.png")
    gt = layout.mask(MSRC_IDS[0])
    lab = (conf != 255) & (gt != 255)
    assert 0.02 < (conf == 255).mean() < 0.5
    assert (conf[lab] == gt[lab]).mean() > 0.95


def test_make_pseudo_masks_errors(tmp_path, msrc_root):
    layout = MsrcSubset(msrc_root, MSRC_IDS[:2])
    with pytest.raises(ValueError, match="threshold"):
        make_pseudo_masks(layout, tmp_path, tmp_path / "o", kind="dense", progress=False)
    with pytest.raises(ValueError, match="kind"):
        make_pseudo_masks(layout, tmp_path, tmp_path / "o", kind="soft", threshold=0.1, progress=False)
    with pytest.raises(FileNotFoundError, match=MSRC_IDS[0] + r"\.npz"):
        make_pseudo_masks(layout, tmp_path, tmp_path / "o", kind="dense", threshold=0.1, progress=False)
    assert not any((tmp_path / "o").glob("*.png"))

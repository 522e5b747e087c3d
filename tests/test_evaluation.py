"""Confusion matrices, scores (hand-computed), seed sweeps and stored-mask evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsss.evaluation import (
    ConfusionMatrix,
    best_threshold,
    cam_to_seed,
    confusion_matrix,
    evaluate_masks,
    evaluate_seeds,
    segmentation_scores,
)
from wsss.inference.store import CamRecord, cam_path, load_cam, save_cam
from wsss.io import save_palette_png


class SynthLayout:
    """Minimal stand-in for wsss.data.voc.VOCLayout (same attributes)."""

    def __init__(self, masks: dict[str, np.ndarray], class_names: list[str], split: str = "train"):
        self._masks = masks
        self.ids = list(masks)
        self.class_names = list(class_names)
        self.num_classes = len(class_names) - 1
        self.split = split

    def mask(self, image_id: str) -> np.ndarray:
        return self._masks[image_id].copy()

    def image(self, image_id: str) -> np.ndarray:
        h, w = self._masks[image_id].shape
        return np.zeros((h, w, 3), np.uint8)

    def label(self, image_id: str) -> np.ndarray:
        m = self._masks[image_id]
        v = np.zeros(self.num_classes, np.float32)
        for c in np.unique(m):
            if 0 < c < 255:
                v[c - 1] = 1
        return v


def _record(keys, high_res) -> CamRecord:
    hr = np.asarray(high_res, np.float32)
    k, h, w = hr.shape
    return CamRecord(
        keys=np.asarray(keys, np.int64),
        high_res=hr,
        strided=np.zeros((k, -(-h // 4), -(-w // 4)), np.float32),
    )


def _from_conf(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gt / pred pixel vectors realising a confusion matrix."""
    gt, pred = [], []
    for g in range(conf.shape[0]):
        for p in range(conf.shape[1]):
            gt += [g] * int(conf[g, p])
            pred += [p] * int(conf[g, p])
    return np.array(gt, np.uint8), np.array(pred, np.uint8)


# ----------------------------------------------------------------------------- metrics

CONF_A = np.array([[50, 5, 5], [10, 30, 0], [0, 10, 20]])


def test_confusion_matrix_counts_and_ignores_void_and_uncertain():
    gt, pred = _from_conf(CONF_A)
    rng = np.random.default_rng(0)
    order = rng.permutation(gt.size)
    gt, pred = gt[order], pred[order]
    # void gt pixels (with any prediction) and uncertain predictions (255) must not count
    gt = np.concatenate([gt, [255, 255, 0, 1, 2]]).astype(np.uint8)
    pred = np.concatenate([pred, [0, 2, 255, 255, 255]]).astype(np.uint8)
    conf = confusion_matrix(gt.reshape(1, -1), pred.reshape(1, -1), 3)
    assert conf.dtype == np.int64 and conf.shape == (3, 3)
    np.testing.assert_array_equal(conf, CONF_A)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="predicted label 3"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.full((2, 2), 3, np.uint8), 3)
    with pytest.raises(ValueError, match="ground-truth label 7"):
        confusion_matrix(np.full((2, 2), 7, np.uint8), np.zeros((2, 2), np.uint8), 3)


def test_scores_hand_computed_3x3():
    # rows = gt, cols = pred.
    # class 0: TP 50, FN 60-50=10, FP 60-50=10 -> IoU 50/70 = 71.4286, P 50/60, R 50/60
    # class 1: TP 30, FN 40-30=10, FP 45-30=15 -> IoU 30/55 = 54.5455, P 30/45, R 30/40
    # class 2: TP 20, FN 30-20=10, FP 25-20=5  -> IoU 20/35 = 57.1429, P 20/25, R 20/30
    # mIoU = (71.4286 + 54.5455 + 57.1429) / 3 = 61.0390
    # precision = (83.3333 + 66.6667 + 80) / 3 = 76.6667; recall = (83.3333 + 75 + 66.6667) / 3 = 75
    # m_under = (10/30 + 10/20) / 2 = 0.41667; m_over = (15/30 + 5/20) / 2 = 0.375
    # total 130: TN_1 = 130-30-15-10 = 75 -> FPR 15/90 = 16.6667; TN_2 = 95 -> FPR 5/100 = 5
    # fpr = 10.8333; fnr = (10/40 + 10/30)/2 = (25 + 33.3333)/2 = 29.1667
    s = segmentation_scores(CONF_A, ["background", "a", "b"])
    assert s["per_class"] == pytest.approx({"background": 71.4286, "a": 54.5455, "b": 57.1429}, abs=1e-4)
    assert s["miou"] == pytest.approx(61.0390, abs=1e-4)
    assert s["precision"] == pytest.approx(76.6667, abs=1e-4)
    assert s["recall"] == pytest.approx(75.0, abs=1e-4)
    assert s["per_class_precision"]["a"] == pytest.approx(66.6667, abs=1e-4)
    assert s["per_class_recall"]["b"] == pytest.approx(66.6667, abs=1e-4)
    assert s["m_under"] == pytest.approx(0.4167, abs=1e-4)
    assert s["m_over"] == pytest.approx(0.375, abs=1e-4)
    assert s["per_class_m_over"] == pytest.approx({"a": 0.5, "b": 0.25}, abs=1e-4)
    assert s["fpr"] == pytest.approx(10.8333, abs=1e-4)
    assert s["fnr"] == pytest.approx(29.1667, abs=1e-4)
    assert s["m_undefined"] == []
    assert s["num_pixels"] == 130
    json.dumps(s)  # plain JSON types


def test_scores_absent_class_and_zero_tp():
    # class c3 occurs nowhere -> None and out of all means.
    # class c2 is in the gt (3 px) but never predicted: IoU 0, precision 0, recall 0, TP = 0
    #   -> FN/TP undefined: left out of m_under / m_over, listed in m_undefined.
    # class 0: TP 8, FN 2, FP 4 -> IoU 8/14 = 57.1429, P 8/12 = 66.6667, R 8/10 = 80
    # class 1: TP 4, FN 1, FP 2 -> IoU 4/7 = 57.1429, P 4/6 = 66.6667, R 4/5 = 80
    # mIoU = (57.1429 * 2 + 0) / 3 = 38.0952; precision = 44.4444; recall = 53.3333
    # m_under = 1/4 = 0.25 ; m_over = 2/4 = 0.5 (class 1 only)
    # total 18: class1 TN = 18-4-2-1 = 11 -> FPR 2/13 = 15.3846; class2 FP 0 -> 0 => fpr 7.6923
    # fnr = (1/5 + 3/3) / 2 = 60
    conf = np.array([[8, 2, 0, 0], [1, 4, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]])
    s = segmentation_scores(conf, ["bg", "c1", "c2", "c3"])
    assert s["per_class"]["c3"] is None and s["per_class_precision"]["c3"] is None
    assert s["per_class"]["c2"] == 0.0
    assert s["miou"] == pytest.approx(38.0952, abs=1e-4)
    assert s["precision"] == pytest.approx(44.4444, abs=1e-4)
    assert s["recall"] == pytest.approx(53.3333, abs=1e-4)
    assert s["m_under"] == pytest.approx(0.25) and s["m_over"] == pytest.approx(0.5)
    assert s["m_undefined"] == ["c2"]
    assert s["per_class_m_under"] == {"c1": 0.25, "c2": None, "c3": None}
    assert s["fpr"] == pytest.approx(7.6923, abs=1e-4)
    assert s["fnr"] == pytest.approx(60.0, abs=1e-4)


def test_scores_errors_and_empty():
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(np.eye(3, dtype=int), ["a", "b"])
    s = segmentation_scores(np.zeros((2, 2), int), ["bg", "a"])
    assert s["miou"] is None and s["per_class"] == {"bg": None, "a": None}


def test_accumulator_is_one_matrix_not_image_average():
    acc = ConfusionMatrix(2)
    # image 1: 2 px, both right; image 2: 8 px foreground, all predicted background
    acc.update(np.array([[0, 1]]), np.array([[0, 1]]))
    acc.update(np.ones((2, 4), np.uint8), np.zeros((2, 4), np.uint8))
    np.testing.assert_array_equal(acc.matrix, [[1, 0], [8, 1]])
    # bg IoU 1/9, fg IoU 1/9 -> 11.1111 (a per-image average would give (100 + 0/2...) instead)
    assert acc.scores(["bg", "fg"])["miou"] == pytest.approx(11.1111, abs=1e-4)
    other = ConfusionMatrix(2)
    other.update(np.array([[1]]), np.array([[1]]))
    acc.merge(other)
    acc.merge(np.array([[1, 0], [0, 0]]))
    np.testing.assert_array_equal(acc.matrix, [[2, 0], [8, 2]])


# ----------------------------------------------------------------------------- seeds


def test_cam_to_seed_ties_go_to_background_and_keys_map():
    rec = _record([2, 5], [[[0.1, 0.3, 0.9]], [[0.2, 0.3, 0.1]]])
    # pixel 0: max 0.2 (key 5) > 0.15 -> 5 ; pixel 1: tie 0.3/0.3 -> first class (key 2);
    # pixel 2: 0.9 -> 2
    np.testing.assert_array_equal(cam_to_seed(rec, 0.15), [[5, 2, 2]])
    # threshold equal to the max -> background (strict >)
    np.testing.assert_array_equal(cam_to_seed(rec, 0.3), [[0, 0, 2]])


def test_evaluate_seeds_hand_computed(tmp_path):
    # one 2x3 image, one class. CAM          gt
    #   0.10 0.50 0.90                         0 1 1
    #   0.20 0.15 0.00                         0 1 255
    # t=0.15: pred 0 1 1 / 1 0(tie) .  -> conf [[1,1],[1,2]] -> IoU 1/3, 2/4 -> mIoU 41.6667
    # t=0.10: pred 0 1 1 / 1 1 .       -> conf [[1,1],[0,3]] -> IoU 1/2, 3/4 -> 62.5
    # t=0.20: pred 0 1 1 / 0 0 .       -> conf [[2,0],[1,2]] -> IoU 2/3, 2/3 -> 66.6667
    # t=0.50: pred 0 0 1 / 0 0 .       -> conf [[2,0],[2,1]] -> IoU 2/4, 1/3 -> 41.6667
    layout = SynthLayout({"im": np.array([[0, 1, 1], [0, 1, 255]], np.uint8)}, ["background", "thing"], "val")
    save_cam(cam_path(tmp_path, "im"), _record([1], [[[0.1, 0.5, 0.9], [0.2, 0.15, 0.0]]]))
    r = evaluate_seeds(layout, tmp_path, 0.15, sweep=[0.1, 0.15, 0.2, 0.5], progress=False)
    assert r["stage"] == "seeds" and r["split"] == "val" and r["num_images"] == 1
    assert r["threshold"] == 0.15 and r["threshold_mode"] == "fixed"
    assert r["miou"] == pytest.approx(41.6667, abs=1e-4)
    assert r["per_class"] == pytest.approx({"background": 33.3333, "thing": 50.0}, abs=1e-4)
    assert [row["threshold"] for row in r["sweep"]] == [0.1, 0.15, 0.2, 0.5]
    assert [row["miou"] for row in r["sweep"]] == pytest.approx([62.5, 41.6667, 66.6667, 41.6667], abs=1e-4)
    assert r["best"]["threshold"] == 0.2 and r["best"]["threshold_mode"] == "swept"
    assert r["best"]["miou"] == pytest.approx(66.6667, abs=1e-4)
    assert best_threshold(r) == 0.2
    for key in ("precision", "recall", "per_class_precision", "per_class_recall", "m_under", "m_over", "fpr", "fnr"):
        assert key in r and key in r["best"]
    json.dumps(r)


def test_sweep_edge_warning_names_the_end(tmp_path):
    # the image of test_evaluate_seeds_hand_computed: mIoU 62.5 / 41.7 / 66.7 / 41.7 at 0.10 / 0.15 / 0.20 / 0.50
    from wsss.evaluation.seeds import sweep_edge_warning

    layout = SynthLayout({"im": np.array([[0, 1, 1], [0, 1, 255]], np.uint8)}, ["background", "thing"], "val")
    save_cam(cam_path(tmp_path, "im"), _record([1], [[[0.1, 0.5, 0.9], [0.2, 0.15, 0.0]]]))
    inside = evaluate_seeds(layout, tmp_path, 0.15, sweep=[0.1, 0.15, 0.2, 0.5], progress=False)
    assert sweep_edge_warning(inside, "the val sweep") is None
    upper = evaluate_seeds(layout, tmp_path, 0.15, sweep=[0.1, 0.15, 0.2], progress=False)
    w = sweep_edge_warning(upper, "the val sweep")
    assert w is not None and "(0.20)" in w and "upper end" in w and "[0.10, 0.20]" in w and "evaluation.sweep" in w
    lower = evaluate_seeds(layout, tmp_path, 0.15, sweep=[0.2, 0.3, 0.5], progress=False)
    assert "lower end" in sweep_edge_warning(lower, "the val sweep")
    # two thresholds are too few to call an end
    assert sweep_edge_warning(evaluate_seeds(layout, tmp_path, 0.15, sweep=[0.15, 0.2], progress=False), "x") is None


def _synthetic_split(tmp_path, n=5, seed=0):
    rng = np.random.default_rng(seed)
    masks, c = {}, 3
    for i in range(n):
        h, w = int(rng.integers(6, 14)), int(rng.integers(6, 14))
        gt = rng.integers(0, c + 1, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        masks[f"img{i}"] = gt
        if i == n - 1:  # an image whose label is empty: K = 0
            keys = np.zeros(0, np.int64)
        else:
            keys = np.sort(rng.choice(np.arange(1, c + 1), size=int(rng.integers(1, c + 1)), replace=False))
        # CAM values on the 0.01 grid, so many pixels tie exactly with sweep thresholds
        hr = np.round(rng.random((len(keys), h, w)) * 0.7, 2).astype(np.float32)
        save_cam(cam_path(tmp_path, f"img{i}"), _record(keys, hr))
    return SynthLayout(masks, ["background", "a", "b", "c"])


def test_sweep_equals_separate_evaluation(tmp_path):
    layout = _synthetic_split(tmp_path)
    r = evaluate_seeds(layout, tmp_path, 0.15, progress=False)
    assert len(r["sweep"]) == 61 and r["sweep"][0]["threshold"] == 0.0 and r["sweep"][-1]["threshold"] == 0.6
    recs = {i: load_cam(cam_path(tmp_path, i)) for i in layout.ids}

    def separate(t):
        acc = ConfusionMatrix(4)
        for i in layout.ids:
            acc.update(layout.mask(i), cam_to_seed(recs[i], t))
        return acc.scores(layout.class_names)

    for row in r["sweep"]:
        assert row["miou"] == separate(row["threshold"])["miou"], row["threshold"]
    fixed = separate(0.15)
    for key in ("miou", "per_class", "precision", "recall", "m_under", "m_over", "fpr", "fnr"):
        assert r[key] == fixed[key], key
    best = separate(r["best"]["threshold"])
    assert r["best"]["per_class"] == best["per_class"]
    assert r["best"]["miou"] == max(row["miou"] for row in r["sweep"])
    # a fixed threshold outside the sweep is still evaluated exactly
    r2 = evaluate_seeds(layout, tmp_path, 0.237, sweep=[0.1, 0.3], progress=False)
    assert r2["miou"] == separate(0.237)["miou"]
    assert [row["threshold"] for row in r2["sweep"]] == [0.1, 0.3]


def test_evaluate_seeds_missing_cam_names_file(tmp_path):
    layout = _synthetic_split(tmp_path, n=3)
    cam_path(tmp_path, "img1").unlink()
    with pytest.raises(FileNotFoundError, match=r"img1\.npz"):
        evaluate_seeds(layout, tmp_path, 0.15, progress=False)


def test_evaluate_seeds_size_mismatch(tmp_path):
    layout = SynthLayout({"x": np.zeros((4, 4), np.uint8)}, ["background", "a"])
    save_cam(cam_path(tmp_path, "x"), _record([1], np.zeros((1, 4, 5))))
    with pytest.raises(ValueError, match=r"x\.npz: CAM size"):
        evaluate_seeds(layout, tmp_path, 0.15, progress=False)


def test_best_threshold_requires_sweep():
    with pytest.raises(ValueError, match="sweep"):
        best_threshold({"miou": 1.0})


# ----------------------------------------------------------------------------- stored masks


def test_evaluate_masks_excludes_uncertain_and_reports_coverage(tmp_path):
    # gt   0 0 1 1        pred 0 255 1 0
    #      0 1 1 255           1 255 1 1
    # non-void gt pixels: 7; labelled (pred != 255) among them: 5 -> coverage 71.4286
    # scored pixels: (0,0)->0 ; (1,2)... list: g0p0, g1p1, g1p0, g0p1, g1p1 -> conf [[1,1],[1,2]]
    # IoU bg 1/3, fg 2/4 -> mIoU 41.6667
    gt = np.array([[0, 0, 1, 1], [0, 1, 1, 255]], np.uint8)
    pred = np.array([[0, 255, 1, 0], [1, 255, 1, 1]], np.uint8)
    layout = SynthLayout({"m": gt}, ["background", "fg"])
    save_palette_png(tmp_path / "m.png", pred)
    r = evaluate_masks(layout, tmp_path, threshold=0.3, progress=False)
    assert r["stage"] == "pseudo" and r["threshold"] == 0.3 and r["threshold_mode"] == "fixed"
    assert r["coverage"] == pytest.approx(71.4286, abs=1e-4)
    assert r["miou"] == pytest.approx(41.6667, abs=1e-4)
    assert r["num_images"] == 1
    (tmp_path / "m.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.png"):
        evaluate_masks(layout, tmp_path, progress=False)
    save_palette_png(tmp_path / "m.png", np.full((2, 4), 9, np.uint8))
    with pytest.raises(ValueError, match=r"m\.png: label 9"):
        evaluate_masks(layout, tmp_path, progress=False)

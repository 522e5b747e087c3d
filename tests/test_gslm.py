"""GSLM: ReLU-k, activation loss, confidence CAM, ignore gradients, and a 1-round run on MSRC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.config import ConfigError, load_config
from wsss.inference.store import CamRecord
from wsss.methods.gslm.model import GSLMParams, activation_loss, confidence_targets, relu_k
from wsss.methods.gslm.module import confidence_cam, gslm_params


# ---------------------------------------------------------------------------------------
# ReLU-k (Eq. 4)
# ---------------------------------------------------------------------------------------


def test_relu_k_values_and_gradient():
    x = torch.tensor([-2.0, 0.0, 0.5, 5.99, 6.0, 7.5], requires_grad=True)
    y = relu_k(x, 6)
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.5, 5.99, 6.0, 6.0])
    y.sum().backward()
    # gradient 1 strictly inside (0, k), 0 where clipped (saturated salient pixels stop pushing)
    assert x.grad.tolist()[2:4] == [1.0, 1.0]
    assert x.grad[0] == 0 and x.grad[5] == 0
    with pytest.raises(ValueError):
        relu_k(x, 0)


# ---------------------------------------------------------------------------------------
# Activation loss (Eq. 5) on a hand-computed example
# ---------------------------------------------------------------------------------------

# cams_raw (B=1, C=2, 2x2); k = 6 -> M' = psi_6(x) / 6
#   ch0 [[-1, 3], [6, 9]]   -> [[0, .5], [1, 1]]
#   ch1 [[1.5, 0], [12, -2]] -> [[.25, 0], [1, 0]]
# confidence [[1, 0], [255, 2]]: pixel (1,0) ignored
#   class 1 targets [[1, 0], [-, 0]], class 2 targets [[0, 0], [-, 1]]
# smooth L1 (beta 1): 0.5 d^2 for |d| < 1, |d| - 0.5 for |d| >= 1
#   class 1: d = -1 -> 0.5; d = .5 -> .125; d = 1 -> 0.5       sum 1.125 (3 px) mean .375
#   class 2: d = .25 -> .03125; d = 0 -> 0; d = -1 -> 0.5        sum .53125 (3 px) mean .1770833
CAMS = torch.tensor([[[[-1.0, 3.0], [6.0, 9.0]], [[1.5, 0.0], [12.0, -2.0]]]])
CONF = torch.tensor([[[1, 0], [255, 2]]], dtype=torch.uint8)


@pytest.mark.parametrize(
    "labels, reduction, expected",
    [
        ([1.0, 1.0], "mean", (1.125 + 0.53125) / 6),  # mean over the 6 valid (class, pixel) terms
        ([1.0, 1.0], "sum", 0.375 + 0.53125 / 3),  # per-class mean, summed over classes (authors)
        ([1.0, 0.0], "mean", 0.375),  # class 2 absent: only class 1 counts
        ([1.0, 0.0], "sum", 0.375),
        ([0.0, 1.0], "mean", 0.53125 / 3),
    ],
)
def test_activation_loss_hand_computed(labels, reduction, expected):
    loss = activation_loss(CAMS, CONF, torch.tensor([labels]), k=6, reduction=reduction)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_activation_loss_sum_over_images():
    # two copies of the same image: "sum" doubles, "mean" stays
    cams, conf, lab = CAMS.repeat(2, 1, 1, 1), CONF.repeat(2, 1, 1), torch.tensor([[1.0, 1.0]] * 2)
    assert activation_loss(cams, conf, lab, 6, "sum").item() == pytest.approx(2 * (0.375 + 0.53125 / 3), abs=1e-6)
    assert activation_loss(cams, conf, lab, 6, "mean").item() == pytest.approx((1.125 + 0.53125) / 6, abs=1e-6)


def test_confidence_targets_nearest_downsampling():
    # 4x4 map, CAM 2x2: nearest sampling picks rows/cols 0 and 2
    conf = torch.tensor([[[1, 9, 0, 9], [9, 9, 9, 9], [255, 9, 2, 9], [9, 9, 9, 9]]], dtype=torch.uint8)
    conf[conf == 9] = 255
    target, weight = confidence_targets(conf, torch.tensor([[1.0, 1.0]]), size=(2, 2))
    assert target.shape == (1, 2, 2, 2)
    assert target[0, 0].tolist() == [[1, 0], [0, 0]]
    assert target[0, 1].tolist() == [[0, 0], [0, 1]]
    assert weight[0, 0].tolist() == [[1, 1], [0, 1]]
    # the downsampled loss equals the loss on the picked pixels
    big = activation_loss(CAMS, conf, torch.tensor([[1.0, 1.0]]), 6, "mean")
    small = activation_loss(CAMS, CONF, torch.tensor([[1.0, 1.0]]), 6, "mean")
    assert big.item() == pytest.approx(small.item())
    with pytest.raises(ValueError):
        confidence_targets(torch.tensor([[[5]]], dtype=torch.uint8), torch.tensor([[1.0, 1.0]]))


def test_ignored_pixels_and_absent_classes_get_zero_gradient():
    torch.manual_seed(0)
    cams = (torch.rand(2, 3, 4, 4) * 5 + 0.5).requires_grad_(True)  # inside (0, k): ReLU-k passes gradients
    conf = torch.randint(0, 4, (2, 4, 4), dtype=torch.int64)
    conf[0, :2] = 255  # ignored rows of image 0
    conf[1, :, 3] = 255  # ignored column of image 1
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    for reduction in ("mean", "sum"):
        cams.grad = None
        activation_loss(cams, conf, labels, k=6, reduction=reduction).backward()
        g = cams.grad
        assert torch.all(g[0, :, :2] == 0) and torch.all(g[1, :, :, 3] == 0)  # exactly zero
        assert torch.all(g[0, 1] == 0) and torch.all(g[1, 0] == 0)  # absent classes
        # every valid pixel of a present class gets a gradient (targets are 0/1, M' in (0, 1))
        assert torch.all(g[0, 0, 2:] != 0) and torch.all(g[1, 2, :, :3] != 0)
    # all ignored: loss 0 and no gradient
    cams.grad = None
    loss = activation_loss(cams, torch.full((2, 4, 4), 255), labels, 6, "mean")
    loss.backward()
    assert loss.item() == 0.0 and torch.all(cams.grad == 0)


# ---------------------------------------------------------------------------------------
# Coarse Generation (Eq. 3): confidence CAM with and without the boundary constraint
# ---------------------------------------------------------------------------------------


def _two_colour_case():
    """40x20 image: red left half (cols 0-19), blue right half. One class (key 3) whose CAM is
    0.8 on cols 0-15, 0.2 on cols 16-23 (confusion band across the colour edge), 0 after."""
    h, w = 20, 40
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :20] = (220, 30, 30)
    img[:, 20:] = (30, 30, 220)
    cam = np.zeros((1, h, w), np.float32)
    cam[0, :, :16] = 0.8
    cam[0, :, 16:24] = 0.2
    rec = CamRecord(keys=np.array([3]), high_res=cam, strided=np.zeros((1, 5, 10), np.float32))
    return img, rec


def test_confidence_cam_without_crf_is_thresholding():
    img, rec = _two_colour_case()
    # a second class (key 7) with a ramp, to check the argmax and both thresholds
    ramp = np.zeros((20, 40), np.float32)
    ramp[:, 24:] = np.linspace(0.0, 0.6, 16, dtype=np.float32)  # 0, .04, .08, ..., .6
    rec = CamRecord(keys=np.array([3, 7]), high_res=np.stack([rec.high_res[0], ramp]), strided=np.zeros((2, 5, 10), np.float32))
    p = GSLMParams(boundary_constraint=False)
    conf = confidence_cam(img, rec, p)
    m = rec.high_res.max(0)
    arg = np.array([3, 7])[rec.high_res.argmax(0)]
    expected = np.where(m > 0.30, arg, np.where(m <= 0.05, 0, 255)).astype(np.uint8)
    assert np.array_equal(conf, expected)
    assert set(np.unique(conf)) == {3, 7, 255, 0}


def test_confidence_cam_with_crf_snaps_to_the_colour_edge():
    pytest.importorskip("pydensecrf")
    img, rec = _two_colour_case()
    no_bc = confidence_cam(img, rec, GSLMParams(boundary_constraint=False))
    assert (no_bc[:, :16] == 3).all() and (no_bc[:, 16:24] == 255).all() and (no_bc[:, 24:] == 0).all()
    bc = confidence_cam(img, rec, GSLMParams(boundary_constraint=True))
    # the CRF (Gaussian compat 10, bilateral 50/5/10) moves both passes to the colour edge:
    # the confusion band disappears, the red side is the class, the blue side background
    expected = np.zeros((20, 40), np.uint8)
    expected[:, :20] = 3
    assert np.array_equal(bc, expected)


def test_params_validation():
    cfg = load_config(None, {"method.name": "gslm", "method.k": 4, "method.reduction": "sum"})
    p = gslm_params(cfg)
    assert p.k == 4 and p.reduction == "sum" and p.crf_params().gaussian_compat == 10
    assert GSLMParams(boundary_constraint=False).crf_params().iterations == 0
    with pytest.raises(ConfigError):
        gslm_params(load_config(None, {"method.name": "gslm", "method.kk": 1}))
    with pytest.raises(ValueError):
        GSLMParams(reduction="median")
    with pytest.raises(ValueError):
        GSLMParams(theta_fg=0.05, theta_bg=0.3)


# ---------------------------------------------------------------------------------------
# The confidence CAM goes through the same augmentation as the image
# ---------------------------------------------------------------------------------------


def test_confidence_mask_follows_the_image_augmentation(msrc_root, tmp_path):
    from wsss.data.datasets import ClassificationDataset
    from wsss.data.transforms import TrainTransform
    from wsss.data.voc import VOCLayout
    from wsss.io import save_palette_png

    base = VOCLayout(msrc_root, "train", limit=2, check_files=False)
    for i in base.ids:  # confidence = left half class 1, right half ignored, top rows background
        h, w = base.image(i).shape[:2]
        m = np.full((h, w), 255, np.uint8)
        m[:, : w // 2] = 1
        m[:10] = 0
        save_palette_png(tmp_path / f"{i}.png", m)
    layout = VOCLayout(msrc_root, "train", limit=2, mask_dir=str(tmp_path), check_files=False)
    ds = ClassificationDataset(layout, TrainTransform(crop_size=400, resize_long=None, hflip=False), with_mask=True)
    item = ds[0]
    img_valid = item["valid"].bool()
    mask = item["mask"]
    assert torch.all(mask[~img_valid] == 255)  # padding ignored
    ys, xs = torch.nonzero(img_valid, as_tuple=True)
    y0, x0 = int(ys.min()), int(xs.min())
    h, w = base.image(base.ids[0]).shape[:2]
    assert int(mask[y0 + 20, x0 + 5]) == 1 and int(mask[y0 + 20, x0 + w - 5]) == 255 and int(mask[y0 + 2, x0 + 5]) == 0


# ---------------------------------------------------------------------------------------
# End to end: GLM + 1 SLM round on 6 real MSRC images
# ---------------------------------------------------------------------------------------


def test_one_round_pipeline_on_msrc(msrc_root, tmp_path):
    from wsss.io import read_json
    from wsss.pipeline import run_pipeline

    out = tmp_path / "run"
    cfg = load_config(
        None,
        {
            "method": {"name": "gslm", "rounds": 1, "epochs_per_round": 1, "seed_source": None},
            "data.root": str(msrc_root),
            "data.limit": 6,
            "data.crop_size": 96,
            "data.resize_long": [96, 128],
            "data.batch_size": 3,
            "data.num_workers": 0,
            "data.check_files": False,
            "model.pretrained": "offline",
            "trainer.max_epochs": 1,
            "trainer.accelerator": "cpu",
            "inference.scales": [1.0],
            "inference.flip": False,
            "refine.workers": 1,
            "refine.confident": False,
            "report.num_samples": 2,
            "output_dir": str(out),
        },
    )
    res = run_pipeline(cfg)
    rounds = read_json(out / "metrics" / "rounds.json")
    assert [r["round"] for r in rounds["rounds"]] == [0, 1]
    assert [r["stage"] for r in rounds["rounds"]] == ["GLM", "SLM"]
    for r in rounds["rounds"]:
        for key in ("miou", "best_miou", "m_under", "m_over", "threshold", "best_threshold"):
            assert isinstance(r[key], float), key
        assert 0.0 <= r["miou"] <= r["best_miou"] + 1e-9 <= 100.0  # swept best is an oracle on this split
    r1 = rounds["rounds"][1]
    assert 0.0 <= r1["confidence_coverage"] <= 100.0 and r1["epochs"] == 1
    assert rounds["params"]["k"] == 6.0 and rounds["pseudo_miou"] == res["pseudo"]["miou"]
    # the run looks like any other method's
    for rel in ("cams", "pseudo", "metrics/seeds.json", "metrics/pseudo.json", "figures/rounds.png",
                "model.safetensors", "round_0/model.safetensors", "round_1/model.safetensors", "report/index.html"):
        assert (out / rel).exists(), rel
    assert len(list((out / "round_1" / "confidence").glob("*.png"))) == 6
    assert read_json(out / "metrics" / "seeds.json")["miou"] == r1["miou"]
    # the SLM started from the GLM and moved away from it
    from safetensors.torch import load_file

    w0 = load_file(str(out / "round_0" / "model.safetensors"))["classifier.weight"]
    w1 = load_file(str(out / "round_1" / "model.safetensors"))["classifier.weight"]
    assert not torch.equal(w0, w1) and torch.allclose(w0, w1, atol=0.5)

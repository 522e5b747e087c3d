"""GSLM: ReLU-k, both activation-loss forms, the module calling them, the confidence CAM, the
rounds recipe's parameters, and GLM + 1 SLM round (then GSLM+ on it) on real MSRC images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsss.config import ConfigError, load_config
from wsss.inference.store import CamRecord
from wsss.methods.gslm.model import (
    AUTHORS_EPS,
    LOSS_FORMS,
    BoundedCAMGenerator,
    GSLMParams,
    activation_loss,
    authors_activation_loss,
    confidence_targets,
    relu_k,
)
from wsss.methods.gslm.module import GSLMModule, gslm_params
from wsss.recipes.rounds import RoundsParams, confidence_cam, round_threshold, rounds_params

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


def test_bounded_generator_clamps_cams_only():
    class Net(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), x

    x = torch.tensor([[[[-1.0, 3.0], [7.0, 12.0]]]])
    logits, cams = BoundedCAMGenerator(Net(), 6)(x)
    assert cams.tolist() == [[[[-1.0, 3.0], [6.0, 6.0]]]] and logits.item() == pytest.approx(21 / 4)


# ---------------------------------------------------------------------------------------
# The paper's activation loss (Eq. 5) on a hand-computed example
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
        ([1.0, 1.0], "sum", 0.375 + 0.53125 / 3),  # per-class mean, summed over classes
        ([1.0, 0.0], "mean", 0.375),  # class 2 absent: only class 1 counts
        ([1.0, 0.0], "sum", 0.375),
        ([0.0, 1.0], "mean", 0.53125 / 3),
    ],
)
def test_paper_loss_hand_computed(labels, reduction, expected):
    loss = activation_loss(CAMS, CONF, torch.tensor([labels]), k=6, reduction=reduction)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_paper_loss_sum_over_images():
    # two copies of the same image: "sum" doubles, "mean" stays
    cams, conf, lab = CAMS.repeat(2, 1, 1, 1), CONF.repeat(2, 1, 1), torch.tensor([[1.0, 1.0]] * 2)
    assert activation_loss(cams, conf, lab, 6, "sum").item() == pytest.approx(2 * (0.375 + 0.53125 / 3), abs=1e-6)
    assert activation_loss(cams, conf, lab, 6, "mean").item() == pytest.approx((1.125 + 0.53125) / 6, abs=1e-6)


# ---------------------------------------------------------------------------------------
# The authors' form (tmlr-group/GSLM train_fuse_cam.py) on the same example
# ---------------------------------------------------------------------------------------

# A = 6 relu(f) / (max relu(f) + eps), max over ALL pixels of the map (the ignored one too):
#   ch0 relu [[0, 3], [6, 9]], max 9   -> A ~ [[0, 2], [4, 6]]
#   ch1 relu [[1.5, 0], [12, 0]], max 12 (at the ignored pixel) -> A ~ [[.75, 0], [6, 0]]
# targets 6 * N: class 1 [[6, 0], [-, 0]], class 2 [[0, 0], [-, 6]]
#   class 1: d = -6 -> 5.5; d = 2 -> 1.5; d = 6 -> 5.5         sum 12.5, mean 12.5/3
#   class 2: d = .75 -> .28125; d = 0 -> 0; d = -6 -> 5.5        sum 5.78125, mean 5.78125/3
# (had the max been taken over valid pixels only, class 2 would be A = [[6, 0], [-, 0]]: 11.5/3)


def _sl1(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def _authors_terms():
    """The six (class, pixel) terms above computed with the eps, to compare at 1e-6."""
    a0 = [6 * v / (9 + AUTHORS_EPS) for v in (0.0, 3.0, 9.0)]  # pixels (0,0), (0,1), (1,1)
    a1 = [6 * v / (12 + AUTHORS_EPS) for v in (1.5, 0.0, 0.0)]
    c1 = [_sl1(a0[0] - 6), _sl1(a0[1] - 0), _sl1(a0[2] - 0)]
    c2 = [_sl1(a1[0] - 0), _sl1(a1[1] - 0), _sl1(a1[2] - 6)]
    return c1, c2


def test_authors_loss_hand_computed():
    c1, c2 = _authors_terms()
    assert sum(c1) == pytest.approx(12.5, abs=1e-4) and sum(c2) == pytest.approx(5.78125, abs=1e-4)
    both = torch.tensor([[1.0, 1.0]])
    # the authors' reduction: per (image, class) mean, summed over classes and images
    assert authors_activation_loss(CAMS, CONF, both).item() == pytest.approx(sum(c1) / 3 + sum(c2) / 3, abs=1e-5)
    assert authors_activation_loss(CAMS, CONF, both).item() == pytest.approx(6.09375, abs=1e-4)
    assert authors_activation_loss(CAMS, CONF, both, reduction="mean").item() == pytest.approx((sum(c1) + sum(c2)) / 6, abs=1e-5)
    assert authors_activation_loss(CAMS, CONF, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(sum(c2) / 3, abs=1e-5)
    two = authors_activation_loss(CAMS.repeat(2, 1, 1, 1), CONF.repeat(2, 1, 1), both.repeat(2, 1))
    assert two.item() == pytest.approx(2 * 6.09375, abs=2e-4)  # summed over images
    with pytest.raises(ValueError):
        authors_activation_loss(CAMS, CONF, both, reduction="median")


def test_authors_form_has_a_much_larger_gradient():
    """One class, two pixels both confidently the class, raw CAM f = [1, 3].

    paper (mean): M' = [1/6, 1/2], d = [-5/6, -1/2], loss = (25/72 + 9/72) / 2 = 17/72;
        dL/df = d / 6 / 2 = [-5/72, -1/24] = [-0.0694, -0.0417].
    authors (mean over the 2 px; one class so "sum" is the same): A = 6 f / 3 = [2, 6],
        d = [-4, 0], loss = (3.5 + 0) / 2 = 1.75 (linear regime);
        dL/df1 = -1/2 * 6/3 = -1.0; dL/df2 = 0 directly, but +1/3 through the max
        (dA1/dmax = -6 f1 / max^2 = -2/3, times dL/dA1 = -1/2).
    The weak pixel is pushed up 14.4 x harder by the authors' form.
    """
    f = torch.tensor([[[[1.0, 3.0]]]], requires_grad=True)
    conf, lab = torch.tensor([[[1, 1]]]), torch.tensor([[1.0]])
    paper = activation_loss(f, conf, lab, 6.0, "mean")
    paper.backward()
    g_paper = f.grad.clone()
    f.grad = None
    authors = authors_activation_loss(f, conf, lab, 6.0, "sum")
    authors.backward()
    g_auth = f.grad.clone()
    assert paper.item() == pytest.approx(17 / 72, abs=1e-6)
    assert g_paper.flatten().tolist() == pytest.approx([-5 / 72, -1 / 24], abs=1e-6)
    assert authors.item() == pytest.approx(1.75, abs=1e-4)
    assert g_auth.flatten().tolist() == pytest.approx([-1.0, 1 / 3], abs=1e-4)
    assert abs(g_auth[0, 0, 0, 0]) / abs(g_paper[0, 0, 0, 0]) == pytest.approx(14.4, rel=1e-3)


def test_confidence_targets_nearest_downsampling():
    # 4x4 map, CAM 2x2: nearest sampling picks rows/cols 0 and 2
    conf = torch.tensor([[[1, 9, 0, 9], [9, 9, 9, 9], [255, 9, 2, 9], [9, 9, 9, 9]]], dtype=torch.uint8)
    conf[conf == 9] = 255
    target, weight = confidence_targets(conf, torch.tensor([[1.0, 1.0]]), size=(2, 2))
    assert target.shape == (1, 2, 2, 2)
    assert target[0, 0].tolist() == [[1, 0], [0, 0]]
    assert target[0, 1].tolist() == [[0, 0], [0, 1]]
    assert weight[0, 0].tolist() == [[1, 1], [0, 1]]
    # the downsampled loss equals the loss on the picked pixels, for both forms
    for fn in LOSS_FORMS.values():
        big = fn(CAMS, conf, torch.tensor([[1.0, 1.0]]), 6, "mean")
        small = fn(CAMS, CONF, torch.tensor([[1.0, 1.0]]), 6, "mean")
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
    ignored = torch.zeros(2, 4, 4, dtype=torch.bool)
    ignored[0, :2] = True
    ignored[1, :, 3] = True
    for form, fn in LOSS_FORMS.items():
        for reduction in ("mean", "sum"):
            cams.grad = None
            fn(cams, conf, labels, k=6, reduction=reduction).backward()
            g = cams.grad
            assert torch.all(g[0, 1] == 0) and torch.all(g[1, 0] == 0), form  # absent classes
            for b, c in ((0, 0), (0, 2), (1, 1), (1, 2)):
                peak = torch.zeros(4, 4, dtype=torch.bool)
                peak.view(-1)[int(cams[b, c].argmax())] = True
                # the paper form: no gradient on ignored pixels; the authors' form: none either,
                # except at the map's max (the normaliser), wherever it lies
                allowed = ~ignored[b] | (peak if form == "authors" else torch.zeros_like(peak))
                assert torch.all(g[b, c][~allowed] == 0), (form, b, c)
                # every valid pixel of a present class gets a gradient
                assert torch.all(g[b, c][~ignored[b] & ~peak] != 0), (form, b, c)
    # all ignored: loss 0 and no gradient
    for fn in LOSS_FORMS.values():
        cams.grad = None
        loss = fn(cams, torch.full((2, 4, 4), 255), labels, 6, "mean")
        loss.backward()
        assert loss.item() == 0.0 and torch.all(cams.grad == 0)


# ---------------------------------------------------------------------------------------
# The module: declarations, and training calls exactly the tested functions
# ---------------------------------------------------------------------------------------


def test_module_declares_its_recipe_and_inputs():
    assert GSLMModule.recipe == "rounds" and GSLMModule.extra_inputs == ("confidence",)
    assert GSLMModule.requires_map == {"seed": ("seed_source", "")} and GSLMModule.params_cls is GSLMParams


class _FixedNet(nn.Module):
    """Returns given logits / CAMs whatever the input (gradients flow to ``cams``)."""

    def __init__(self, logits, cams):
        super().__init__()
        self.logits, self.cams = logits, nn.Parameter(cams.clone())

    def forward(self, x):
        return self.logits, self.cams


@pytest.mark.parametrize("form, reduction", [("paper", None), ("paper", "sum"), ("authors", None), ("authors", "mean")])
def test_compute_loss_is_cls_plus_alpha_times_the_form(form, reduction):
    cfg = load_config(None, {"method": {"name": "gslm", "alpha": 0.25, "loss_form": form, "reduction": reduction,
                                        "rounds": 2}, "model.pretrained": "none"})
    module = GSLMModule(cfg, num_classes=2)
    logits = torch.tensor([[0.3, -1.2]])
    module.net = _FixedNet(logits, CAMS)
    labels = torch.tensor([[1.0, 1.0]])
    loss, logs = module.compute_loss({"image": torch.zeros(1, 3, 8, 8), "label": labels, "confidence": CONF.long()})
    fn = activation_loss if form == "paper" else authors_activation_loss
    red = reduction or ("mean" if form == "paper" else "sum")
    act = fn(CAMS, CONF, labels, 6.0, red)
    cls = torch.nn.functional.multilabel_soft_margin_loss(logits, labels)
    assert logs["act"].item() == pytest.approx(act.item(), abs=1e-6)
    assert loss.item() == pytest.approx(cls.item() + 0.25 * act.item(), abs=1e-6)
    with pytest.raises(RuntimeError, match="no confidence CAM"):
        module.compute_loss({"image": torch.zeros(1, 3, 8, 8), "label": labels})


def test_train_without_the_confidence_input_stops(msrc_root):
    from wsss.training import check_extra_inputs

    cfg = load_config(None, {"method.name": "gslm", "data.root": str(msrc_root)})
    with pytest.raises(ValueError, match=r"method 'gslm' \(GSLMModule\) needs extra training input\(s\) \['confidence'\]"):
        check_extra_inputs(cfg, None)


# ---------------------------------------------------------------------------------------
# Parameters: the module's and the recipe's
# ---------------------------------------------------------------------------------------


def test_params_validation():
    cfg = load_config(None, {"method.name": "gslm", "method.k": 4, "method.loss_form": "authors", "method.theta_fg": 0.4})
    p = gslm_params(cfg)  # the module reads its own keys only
    assert p.k == 4 and p.loss_form == "authors" and p.resolved_reduction == "sum" and p.loss_fn() is authors_activation_loss
    assert GSLMParams().resolved_reduction == "mean" and GSLMParams(reduction="sum").resolved_reduction == "sum"
    mp, rp = rounds_params(cfg)
    assert mp == p and rp.theta_fg == 0.4 and rp.crf_params().gaussian_compat == 10
    assert RoundsParams(boundary_constraint=False).crf_params().iterations == 0

    def bad(match: str, **method):
        with pytest.raises(ConfigError, match=match):
            rounds_params(load_config(None, {"method": {"name": "gslm", **method}}))

    bad(r"has no parameter\(s\) \['kk'\]", kk=1)
    bad("loss_form must be one of", loss_form="median")
    bad("reduction must be one of", reduction="median")
    bad("need 0 <= theta_bg <= theta_fg <= 1", theta_fg=0.05, theta_bg=0.3)
    bad("rounds must be a positive integer", rounds=0)
    bad("epochs_per_round must be an integer", epochs_per_round=1.5)
    bad("conflict must be one of", conflict="vote")
    bad("seed_kind 'pseudo' needs method.seed_source", seed_kind="pseudo")
    bad("unknown key", crf={"gaussian_sxyz": 3})
    bad("relu_k_inference must be false with loss_form 'authors'", loss_form="authors", relu_k_inference=True)
    bad("needs evaluation.threshold_from: null", threshold_increment_per_round=0.05)


def test_threshold_increment_per_round():
    cfg = load_config(None, {"method": {"name": "gslm", "rounds": 3, "threshold_increment_per_round": 0.05},
                             "evaluation.threshold_from": None, "evaluation.threshold": 0.15})
    _, rp = rounds_params(cfg)
    # authors: cam_eval_thres + inc * it, it = 0 for the first SLM round
    assert [round_threshold(cfg, rp, r) for r in range(4)] == [0.15, 0.15, 0.2, 0.25]
    with pytest.raises(ConfigError, match="outside"):
        rounds_params(load_config(None, {"method": {"name": "gslm", "rounds": 20, "threshold_increment_per_round": 0.1},
                                         "evaluation.threshold_from": None}))


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
    p = RoundsParams(boundary_constraint=False)
    conf = confidence_cam(img, rec, p)
    m = rec.high_res.max(0)
    arg = np.array([3, 7])[rec.high_res.argmax(0)]
    expected = np.where(m > 0.30, arg, np.where(m <= 0.05, 0, 255)).astype(np.uint8)
    assert np.array_equal(conf, expected)
    assert set(np.unique(conf)) == {3, 7, 255, 0}


def test_confidence_cam_with_crf_snaps_to_the_colour_edge():
    pytest.importorskip("pydensecrf")
    img, rec = _two_colour_case()
    no_bc = confidence_cam(img, rec, RoundsParams(boundary_constraint=False))
    assert (no_bc[:, :16] == 3).all() and (no_bc[:, 16:24] == 255).all() and (no_bc[:, 24:] == 0).all()
    bc = confidence_cam(img, rec, RoundsParams(boundary_constraint=True))
    # the CRF (Gaussian compat 10, bilateral 50/5/10) moves both passes to the colour edge:
    # the confusion band disappears, the red side is the class, the blue side background
    expected = np.zeros((20, 40), np.uint8)
    expected[:, :20] = 3
    assert np.array_equal(bc, expected)


# ---------------------------------------------------------------------------------------
# End to end through run_rounds: GLM + 1 SLM round on 4 real MSRC images, then GSLM+ on it
# ---------------------------------------------------------------------------------------

TINY = {
    "data.limit": 4, "data.crop_size": 64, "data.resize_long": [64, 96], "data.batch_size": 2,
    "data.num_workers": 0, "data.check_files": False, "model.pretrained": "offline",
    "trainer.max_epochs": 1, "trainer.accelerator": "cpu", "inference.scales": [1.0], "inference.flip": False,
    "refine.workers": 1, "refine.confident": False, "report.num_samples": 1,
}


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.glob(pattern)) if p.is_file()}


#: MSRC images with background and 1-2 object classes each (the first ids of the split are
#: full-frame flowers: one class, no background, a degenerate 100 mIoU)
MIXED = {"train": ["10_5_s", "12_20_s", "19_12_s", "1_27_s"], "val": ["12_25_s", "19_11_s", "4_19_s", "5_16_s"]}


def _mixed_root(msrc_root: Path, dst: Path) -> Path:
    """A VOC folder of symlinks to the real MSRC data with its own train / val split files."""
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass", "classes.txt"):
        (dst / name).symlink_to(msrc_root / name)
    (dst / "ImageSets" / "Main").symlink_to(msrc_root / "ImageSets" / "Main")
    for split, ids in MIXED.items():
        (dst / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return dst


@pytest.fixture(scope="module")
def glm_run(msrc_root, tmp_path_factory):
    from wsss.recipes.rounds import run_rounds

    base = tmp_path_factory.mktemp("gslm")
    root = _mixed_root(msrc_root, base / "msrc")
    out = base / "run"
    over = {**TINY, "data.root": str(root), "output_dir": str(out),
            "method": {"name": "gslm", "rounds": 1, "epochs_per_round": 1, "seed_source": None}}
    res = run_rounds(load_config(None, over))
    return out, over, res


def test_one_round_on_msrc(glm_run):
    from safetensors.torch import load_file

    from wsss.io import read_json

    out, _, res = glm_run
    rounds = read_json(out / "metrics" / "rounds.json")
    assert [r["round"] for r in rounds["rounds"]] == [0, 1]
    assert [r["stage"] for r in rounds["rounds"]] == ["GLM", "SLM"]
    for r in rounds["rounds"]:
        for key in ("miou", "best_miou", "m_under", "m_over", "threshold", "best_threshold"):
            assert isinstance(r[key], float), key
        assert 0.0 <= r["miou"] <= r["best_miou"] + 1e-9 <= 100.0  # swept best is an oracle on this split
    r1 = rounds["rounds"][1]
    assert 0.0 <= r1["confidence_coverage"] <= 100.0 and r1["epochs"] == 1
    assert rounds["params"]["k"] == 6.0 and rounds["params"]["loss_form"] == "paper"
    assert rounds["params"]["reduction"] == "mean" and rounds["pseudo_miou"] == res["pseudo"]["miou"]
    # the run looks like any other method's
    for rel in ("cams", "pseudo", "metrics/seeds.json", "metrics/pseudo.json", "figures/rounds.png",
                "model.safetensors", "round_0/model.safetensors", "round_1/model.safetensors", "report/index.html",
                "round_1/fingerprints/confidence.json", "round_1/fingerprints/train.json", "fingerprints/infer.json"):
        assert (out / rel).exists(), rel
    assert len(list((out / "round_1" / "confidence").glob("*.png"))) == 4
    assert read_json(out / "metrics" / "seeds.json")["miou"] == r1["miou"]
    assert (out / "cams").stat().st_ino != (out / "round_1" / "cams").stat().st_ino
    assert all((out / "cams" / f.name).samefile(f) for f in (out / "round_1" / "cams").glob("*.npz"))
    # the SLM round was trained on the confidence maps, from the GLM's weights
    fp = read_json(out / "round_1" / "fingerprints" / "train.json")
    assert fp["inputs"]["extras.confidence"].startswith("label_dir:pad=255:sha256:")
    assert fp["inputs"]["init_weights"].startswith("sha256:")
    assert fp["keys"]["trainer.max_epochs"] == 1 and "method.rounds" not in fp["keys"]
    assert read_json(out / "round_1" / "model.json")["init_weights"].endswith("round_0/model.safetensors")
    w0 = load_file(str(out / "round_0" / "model.safetensors"))["classifier.weight"]
    w1 = load_file(str(out / "round_1" / "model.safetensors"))["classifier.weight"]
    assert not torch.equal(w0, w1) and torch.allclose(w0, w1, atol=0.5)


def test_rerun_reuses_and_a_changed_key_stops(glm_run):
    from wsss.pipeline import run_pipeline
    from wsss.recipes.rounds import run_rounds

    out, over, res = glm_run
    before = {**_mtimes(out, "round_*/model.safetensors"), **_mtimes(out, "round_1/confidence/*.png"),
              **_mtimes(out, "round_*/cams/*.npz")}
    again = run_pipeline(load_config(None, over))  # dispatches to the recipe (GSLMModule.recipe = "rounds")
    assert [r["round"] for r in again["rounds"]] == [0, 1]
    assert again["seeds"]["miou"] == res["seeds"]["miou"]
    after = {**_mtimes(out, "round_*/model.safetensors"), **_mtimes(out, "round_1/confidence/*.png"),
             **_mtimes(out, "round_*/cams/*.npz")}
    assert before == after and len(before) > 8  # nothing recomputed
    # a default written out in the config is the same config
    run_rounds(load_config(None, {**over, "method": {**over["method"], "alpha": 0.5, "reduction": "mean", "crf": {}}}))
    assert after == {**_mtimes(out, "round_*/model.safetensors"), **_mtimes(out, "round_1/confidence/*.png"),
                     **_mtimes(out, "round_*/cams/*.npz")}
    changed = {**over, "method": {**over["method"], "alpha": 0.75}}
    with pytest.raises(ConfigError, match=r"round_1: outputs of stage 'train' were made with method.alpha=0.5, the config says 0.75"):
        run_rounds(load_config(None, changed))
    changed = {**over, "method": {**over["method"], "theta_fg": 0.4}}
    with pytest.raises(ConfigError, match=r"confidence maps were made with method.theta_fg=0.3, the config says 0.4"):
        run_rounds(load_config(None, changed))


def test_gslm_plus_on_another_run_with_the_authors_loss(glm_run, tmp_path):
    from wsss.io import read_json
    from wsss.recipes.rounds import run_rounds

    src, over, _ = glm_run
    out = tmp_path / "plus"
    cfg = load_config(None, {**over, "output_dir": str(out), "method": {
        "name": "gslm", "rounds": 1, "epochs_per_round": 1, "seed_source": str(src / "round_0"),
        "loss_form": "authors"}})
    run_rounds(cfg)
    rounds = read_json(out / "metrics" / "rounds.json")
    r0, r1 = rounds["rounds"]
    # round 0 = the source's CAMs evaluated again: same scores as the source's own round 0
    assert r0["miou"] == pytest.approx(read_json(src / "round_0" / "metrics" / "seeds.json")["miou"])
    assert rounds["params"]["loss_form"] == "authors" and rounds["params"]["reduction"] == "sum"
    # round 1's confidence maps come from the same CAMs with the same settings: identical bytes
    for f in (src / "round_1" / "confidence").glob("*.png"):
        assert (out / "round_1" / "confidence" / f.name).read_bytes() == f.read_bytes()
    assert read_json(out / "round_1" / "model.json")["init_weights"] == str(src / "round_0" / "model.safetensors")
    assert isinstance(r1["miou"], float) and (out / "report" / "index.html").is_file()


def test_gslm_plus_on_pseudo_masks_with_relu_k_inference(glm_run, tmp_path):
    """seed_kind pseudo: the source's CRF pseudo masks are the first confidence maps (linked, not
    rebuilt); relu_k_inference wraps the generator at inference (and enters the fingerprint)."""
    from wsss.io import read_json
    from wsss.recipes.rounds import run_rounds

    src, over, _ = glm_run
    out = tmp_path / "pseudo"
    run_rounds(load_config(None, {**over, "output_dir": str(out), "method": {
        "name": "gslm", "rounds": 1, "epochs_per_round": 1, "seed_source": str(src), "seed_kind": "pseudo",
        "init_from": str(src / "round_0"), "relu_k_inference": True}}))
    for f in (src / "pseudo").glob("*.png"):
        assert (out / "round_1" / "confidence" / f.name).samefile(f)
    infer = read_json(out / "round_1" / "fingerprints" / "infer.json")
    assert infer["inputs"]["net_wrapper"] == "wsss.methods.gslm.model.BoundedCAMGenerator(k=6.0)"
    r0 = read_json(out / "metrics" / "rounds.json")["rounds"][0]
    assert r0["miou"] == pytest.approx(read_json(src / "metrics" / "pseudo.json")["miou"])


def test_rounds_run_the_random_walk_on_their_own_cams(glm_run, tmp_path):
    """The rounds recipe ends like the plain pipeline: with affinity.enabled the boundary network is
    trained from the last round's CAMs and the walk writes pseudo_rw/ (issue 10: the walk on any
    method's CAMs, e.g. GSLM's)."""
    from wsss.io import read_json
    from wsss.recipes.rounds import run_rounds

    src, over, _ = glm_run
    out = tmp_path / "rw"
    res = run_rounds(load_config(None, {
        **over, "output_dir": str(out), "affinity.enabled": True, "affinity.epochs": 1,
        "affinity.sweep_fg": [0.3], "affinity.sweep_bg": [0.05], "random_walk.steps": 8,
        "method": {"name": "gslm", "rounds": 1, "epochs_per_round": 1, "seed_source": str(src / "round_0")}}))
    rw = read_json(out / "metrics" / "pseudo_rw.json")
    assert res["pseudo_rw"]["miou"] == rw["miou"] and 0 <= rw["miou"] <= 100 and rw["num_images"] == 4
    assert sorted(p.stem for p in (out / "pseudo_rw").glob("*.png")) == sorted(MIXED["train"])
    assert sorted(p.stem for p in (out / "rw").glob("*.npz")) == sorted(MIXED["train"] + MIXED["val"])
    # the walk ran on the run's own (last round's) CAMs, under the run's fingerprint chain
    assert read_json(out / "fingerprints" / "affinity.json")["previous"] == read_json(out / "fingerprints" / "refine.json")["hash"]
    assert read_json(out / "metrics" / "timing.json")["after_refine"] > 0

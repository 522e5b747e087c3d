"""The segmentation network (issue 11): DeepLabV3+ with offline encoder weights, its training
module, multi-scale / CRF inference, evaluation and ``wsss predict``."""

from __future__ import annotations

import io
import math
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wsss.backbones import Backbone
from wsss.data.voc import VOCLayout
from wsss.evaluation.seeds import evaluate_masks
from wsss.io import read_index_png
from wsss.segmentation.infer import (
    DEEPLAB_CRF,
    crf_postprocess,
    evaluate_segmentation,
    evaluate_segmentation_variants,
    predict_probs,
)
from wsss.segmentation.model import SegmentationNet, build_deeplabv3plus
from wsss.segmentation.module import SegmentationModule, SegParams
from wsss.segmentation.predict import (
    load_segmentation_model,
    predict_images,
    save_segmentation_model,
    segmentation_model_paths,
)

torch.set_num_threads(1)
K_MSRC = 17  # MSRC: background + 16 classes


@pytest.fixture(scope="module")
def no_network():
    """Any attempt to open a network connection fails the test."""
    mp = pytest.MonkeyPatch()

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(torch.hub, "load_state_dict_from_url", refuse)
    mp.setattr(torch.hub, "download_url_to_file", refuse)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def lite0_offline(no_network) -> SegmentationNet:
    return build_deeplabv3plus(K_MSRC)  # efficientnet_lite0, offline weights, OS 16, rates 6/12/18


@pytest.fixture(scope="module")
def tiny_random(no_network) -> SegmentationNet:
    torch.manual_seed(0)
    return build_deeplabv3plus(K_MSRC, pretrained="none").eval()


# ---------------------------------------------------------------------------------------------
# model.py
# ---------------------------------------------------------------------------------------------


def test_offline_encoder_weights_equal_backbone_weights(lite0_offline):
    ref = Backbone("efficientnet_lite0", output_stride=16, pretrained="offline").model.state_dict()
    enc = lite0_offline.model.encoder.model.state_dict()
    assert len(enc) == 288  # every tensor of the features_only Lite0 (no conv_head / bn2)
    for key in ("conv_stem.weight", "bn1.running_mean", "blocks.3.0.conv_pw.weight", "blocks.6.0.bn3.running_var"):
        assert torch.equal(enc[key], ref[key]), key
    # and really not a random init: ImageNet BN statistics are not the defaults
    assert not torch.allclose(enc["bn1.running_var"], torch.ones_like(enc["bn1.running_var"]))
    assert lite0_offline.arch() == {"architecture": "deeplabv3plus", "encoder": "efficientnet_lite0",
                                    "num_classes": 17, "output_stride": 16, "atrous_rates": [6, 12, 18]}
    aspp_dilations = sorted({m.dilation[0] for m in lite0_offline.model.decoder.modules()
                             if isinstance(m, nn.Conv2d) and m.dilation[0] > 1})
    assert aspp_dilations == [6, 12, 18]


def test_any_input_size_pads_and_crops(tiny_random):
    net = tiny_random
    x = torch.randn(2, 3, 213, 320)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, K_MSRC, 213, 320)
        padded = torch.nn.functional.pad(x, (0, 0, 0, 11))  # 213 -> 224, a multiple of 16
        ref = net.model(padded)[:, :, :213]
        assert torch.allclose(y, ref, atol=1e-6)
        assert net(torch.randn(1, 3, 37, 50)).shape == (1, K_MSRC, 37, 50)
    with pytest.raises(ValueError, match="input must be"):
        net(torch.randn(3, 213, 320))


def test_local_weights_file_with_renamed_modules(tmp_path, no_network):
    import timm
    from safetensors.torch import save_file

    # convnext's features_only wrapper renames stem.0 -> stem_0: matched anyway
    torch.manual_seed(1)
    full = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "convnext_atto.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    net = build_deeplabv3plus(3, "convnext_atto", str(path))
    enc = net.model.encoder.model.state_dict()
    assert torch.equal(enc["stem_0.weight"], full.state_dict()["stem.0.weight"])
    assert torch.equal(enc["stages_3.blocks.1.conv_dw.weight"], full.state_dict()["stages.3.blocks.1.conv_dw.weight"])
    # weights of another network: one line naming the file
    with pytest.raises(ValueError, match=r"convnext_atto\.safetensors: .*efficientnet_lite0"):
        build_deeplabv3plus(3, "efficientnet_lite0", str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_deeplabv3plus(3, "efficientnet_lite0", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="output_stride"):
        build_deeplabv3plus(3, output_stride=32, pretrained="none")
    with pytest.raises(ValueError, match="unknown timm encoder"):
        build_deeplabv3plus(3, "no_such_net", pretrained="none")


# ---------------------------------------------------------------------------------------------
# module.py
# ---------------------------------------------------------------------------------------------


class _ConstNet(nn.Module):
    """Logits [0, ln 3] at every pixel: p = (0.25, 0.75)."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, math.log(3.0)]))

    def forward(self, x):
        b, _, h, w = x.shape
        return self.bias.view(1, 2, 1, 1).expand(b, 2, h, w) + 0 * x[:, :1]


def test_params_defaults_and_errors():
    p = SegParams()
    assert (p.lr, p.momentum, p.weight_decay, p.head_lr_mult, p.label_smoothing) == (0.007, 0.9, 4e-5, 10.0, 0.0)
    assert p.atrous_rates == (6, 12, 18) and p.output_stride == 16 and p.target_key == "pseudo_mask"
    q = SegParams.from_dict({"source": "gt", "atrous_rates": [12, 24, 36], "output_stride": 8})
    assert q.target_key == "mask" and q.mask_folder is None and q.atrous_rates == (12, 24, 36)
    assert SegParams.from_dict({"source": "pseudo_rw"}).mask_folder == "pseudo_rw"
    assert q.to_dict()["atrous_rates"] == [12, 24, 36]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_typo'\]"):
        SegParams.from_dict({"lr_typo": 1})
    with pytest.raises(ValueError, match="source"):
        SegParams(source="saliency")
    with pytest.raises(ValueError, match="batch_size"):
        SegParams(batch_size=1)


def test_loss_hand_computed_and_checks():
    mod = SegmentationModule(2, SegParams(), net=_ConstNet())
    x = torch.zeros(2, 3, 2, 2)
    y = torch.tensor([[[1, 255], [0, 255]], [[255, 255], [255, 255]]])
    loss = mod.compute_loss({"image": x, "pseudo_mask": y})
    # mean over the two labelled pixels of -ln 0.75 and -ln 0.25
    assert loss.item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, abs=1e-6)
    ls = SegmentationModule(2, SegParams(label_smoothing=0.1), net=_ConstNet())
    y1 = torch.tensor([[[1, 255], [255, 255]], [[255, 255], [255, 255]]])
    # (1 - 0.1) * -ln 0.75 + 0.1 * mean(-ln 0.25, -ln 0.75)
    expect = 0.9 * -math.log(0.75) + 0.1 * (-math.log(0.25) - math.log(0.75)) / 2
    assert ls.compute_loss({"image": x, "pseudo_mask": y1}).item() == pytest.approx(expect, abs=1e-6)
    # every pixel ignored: 0, not NaN, and backward works
    none = mod.compute_loss({"image": x, "pseudo_mask": torch.full((2, 2, 2), 255)})
    none.backward()
    assert none.item() == 0.0 and torch.equal(mod.net.bias.grad, torch.zeros(2))
    gt = SegmentationModule(2, SegParams(source="gt"), net=_ConstNet())
    assert gt.compute_loss({"image": x, "mask": y}).item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="target label 2 outside 0..1"):
        mod.compute_loss({"image": x, "pseudo_mask": torch.full((2, 2, 2), 2)})
    with pytest.raises(ValueError, match="no 'pseudo_mask'"):
        mod.compute_loss({"image": x, "mask": y})
    with pytest.raises(ValueError, match="batch of one image"):
        mod.compute_loss({"image": x[:1], "pseudo_mask": y[:1]})


def test_param_groups_encoder_and_head_lr(tiny_random):
    mod = SegmentationModule(K_MSRC, SegParams(lr=0.01), net=tiny_random)
    groups = mod.param_groups()
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert [g["lr"] for g in groups] == [pytest.approx(0.01), pytest.approx(0.1)]
    enc_ids = {id(p) for p in tiny_random.model.encoder.parameters()}
    assert all(id(p) in enc_ids for p in groups[0]["params"])
    assert not any(id(p) in enc_ids for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(tiny_random.parameters()))
    frozen = SegmentationModule(K_MSRC, SegParams(freeze_bn=True), net=build_deeplabv3plus(K_MSRC, pretrained="none"))
    frozen.train()
    bns = [m for m in frozen.net.model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)


def test_module_learns_a_synthetic_task():
    """Red pixels are class 1, the rest class 0: 25 SGD steps must cut the loss by more than half."""
    torch.manual_seed(0)
    net = build_deeplabv3plus(2, pretrained="none")
    mod = SegmentationModule(2, SegParams(lr=0.02), net=net)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(4, 3, 32, 32, generator=g) * 0.2
    red = torch.zeros(4, 32, 32, dtype=torch.bool)
    red[0, :, :16] = red[1, 8:24, 8:24] = red[2, 16:] = red[3, :, 20:] = True
    img[:, 0][red] = 1.0
    y = red.long()
    y[:, 0, 0] = 255
    opt = torch.optim.SGD(mod.param_groups(), lr=0.02, momentum=0.9)
    mod.train()
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = mod.compute_loss({"image": img, "pseudo_mask": y})
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------
# infer.py
# ---------------------------------------------------------------------------------------------


class _RedNet(nn.Module):
    """Logit 0 for class 0 and the (un-normalised) red channel for class 1."""

    num_classes = 2

    def forward(self, x):
        return torch.cat([torch.full_like(x[:, :1], 0.5), x[:, :1]], dim=1)


def test_predict_probs_hand_computed_and_invariants(tiny_random):
    img = np.zeros((5, 7, 3), np.uint8)
    img[..., 0] = 255
    p = predict_probs(_RedNet(), img, scales=(1.0, 0.5, 1.5), flip=True, mean=(0, 0, 0), std=(1, 1, 1))
    assert p.shape == (2, 5, 7) and p.dtype == np.float32
    # constant image: every view gives softmax(0.5, 1) = (1 - s, s), s = sigmoid(0.5)
    s = 1.0 / (1.0 + math.exp(-0.5))
    assert np.allclose(p[1], s, atol=1e-6) and np.allclose(p[0], 1 - s, atol=1e-6)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    q = predict_probs(tiny_random, photo, scales=(0.75, 1.0), flip=True)
    assert q.shape == (K_MSRC, 45, 61)
    assert np.allclose(q.sum(0), 1.0, atol=1e-5) and q.min() >= 0
    # flip TTA makes the prediction equivariant to a horizontal flip of the input
    q_flipped = predict_probs(tiny_random, np.ascontiguousarray(photo[:, ::-1]), scales=(0.75, 1.0), flip=True)
    assert np.allclose(q_flipped[:, :, ::-1], q, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        predict_probs(tiny_random, photo.astype(np.float32))
    with pytest.raises(ValueError, match="scales"):
        predict_probs(tiny_random, photo, scales=())


def test_crf_postprocess_deeplab_parameters():
    pytest.importorskip("pydensecrf.densecrf")
    assert (DEEPLAB_CRF.iterations, DEEPLAB_CRF.gaussian_sxy, DEEPLAB_CRF.gaussian_compat) == (10, 1.0, 3.0)
    assert (DEEPLAB_CRF.bilateral_sxy, DEEPLAB_CRF.bilateral_srgb, DEEPLAB_CRF.bilateral_compat) == (67.0, 3.0, 4.0)
    img = np.zeros((20, 20, 3), np.uint8)
    img[:, 10:] = 200
    probs = np.zeros((2, 20, 20), np.float32)
    probs[0, :, :10], probs[1, :, :10] = 0.9, 0.1
    probs[0, :, 10:], probs[1, :, 10:] = 0.1, 0.9
    probs[:, 5, 15] = (0.55, 0.45)  # a weakly wrong pixel inside the bright class-1 region
    out = crf_postprocess(img, probs)
    assert out.dtype == np.uint8 and out.shape == (20, 20)
    expect = np.zeros((20, 20), np.uint8)
    expect[:, 10:] = 1
    assert np.array_equal(out, expect)  # the CRF fixes the pixel and keeps the colour edge


class _FakeLayout:
    split = "val"
    class_names = ["background", "thing"]
    num_classes = 1

    def __init__(self):
        self.ids = ["a", "b"]
        img = np.zeros((4, 4, 3), np.uint8)
        img[:, :2, 0] = 255  # left half red
        gt = np.zeros((4, 4), np.uint8)
        gt[:, :2] = 1
        gt[0, 3] = 1  # a class-1 pixel the net calls background
        gt[3, 3] = 255  # void
        self._img = {"a": img, "b": img}
        self._gt = {"a": gt, "b": gt}

    def image(self, i):
        return self._img[i]

    def mask(self, i):
        return self._gt[i]


def test_evaluate_segmentation_hand_computed_and_same_keys_as_masks(tmp_path):
    layout = _FakeLayout()
    res = evaluate_segmentation(_RedNet(), layout, mean=(0, 0, 0), std=(1, 1, 1), save_dir=tmp_path, progress=False)
    # per image: bg TP 6, FP 1; thing TP 8, FN 1 -> IoU 6/7 and 8/9
    assert res["miou"] == pytest.approx(round(100 * (6 / 7 + 8 / 9) / 2, 4))
    assert res["per_class"] == {"background": pytest.approx(round(600 / 7, 4)), "thing": pytest.approx(round(800 / 9, 4))}
    assert res["stage"] == "segmentation" and res["split"] == "val" and res["num_images"] == 2
    assert (res["scales"], res["flip"], res["crf"], res["crf_params"]) == ([1.0], False, False, None)
    ref = evaluate_masks(layout, tmp_path, progress=False)  # the saved predictions, scored by the pseudo-mask path
    assert set(ref) <= set(res)
    for key in ref:
        if key != "stage":
            assert res[key] == ref[key], key
    with pytest.raises(ValueError, match="predicts 17 classes"):
        evaluate_segmentation(build_deeplabv3plus(K_MSRC, pretrained="none"), layout, progress=False)


def test_variants_share_probabilities_per_image():
    pytest.importorskip("pydensecrf.densecrf")
    calls = []

    class Counting(_RedNet):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return super().forward(x)

    layout = _FakeLayout()
    res = evaluate_segmentation_variants(
        Counting(), layout, {"single": {}, "ms": {"scales": [1.0, 0.5], "flip": True},
                             "ms_crf": {"scales": [1.0, 0.5], "flip": True, "crf": True}},
        mean=(0, 0, 0), std=(1, 1, 1), progress=False)
    assert len(calls) == 2 * (1 + 2)  # per image: one single-scale pass + two scales (flip in the batch)
    assert [res[n]["stage"] for n in res] == ["single", "ms", "ms_crf"]
    assert (res["ms_crf"]["crf"], res["ms_crf"]["crf_params"]["bilateral_sxy"]) == (True, 67.0)
    single = evaluate_segmentation(_RedNet(), layout, mean=(0, 0, 0), std=(1, 1, 1), stage="single", progress=False)
    assert res["single"] == single
    with pytest.raises(ValueError, match="unknown key"):
        evaluate_segmentation_variants(_RedNet(), layout, {"x": {"scale": [1.0]}}, progress=False)


# ---------------------------------------------------------------------------------------------
# predict.py (and one real-data smoke: train 1 epoch on MSRC gt masks, evaluate, predict)
# ---------------------------------------------------------------------------------------------


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


def test_save_load_round_trip_and_errors(tmp_path, tiny_random):
    meta = {"class_names": [f"c{i}" for i in range(K_MSRC)], "mean": [0.5] * 3, "std": [0.25] * 3, "source": "gt"}
    weights = save_segmentation_model(tiny_random, tmp_path, meta)
    assert weights == segmentation_model_paths(tmp_path)[0] == tmp_path / "segmentation" / "model.safetensors"
    net, info = load_segmentation_model(tmp_path)
    assert info["encoder"] == "efficientnet_lite0" and info["source"] == "gt" and info["mean"] == [0.5] * 3
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(net(x), tiny_random(x))
    with pytest.raises(FileNotFoundError, match=r"segmentation[/\\]model.json: no segmentation model"):
        load_segmentation_model(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="class_names"):
        save_segmentation_model(tiny_random, tmp_path / "x", {**meta, "class_names": ["bg"]})
    with pytest.raises(ValueError, match="'std'"):
        save_segmentation_model(tiny_random, tmp_path / "x", {**meta, "std": [1, 1]})
    with pytest.raises(ValueError, match="contradicts"):
        save_segmentation_model(tiny_random, tmp_path / "x", {**meta, "num_classes": 21})


def test_train_one_epoch_on_msrc_then_evaluate_and_predict(tmp_path, msrc_root, capsys, no_network):
    import lightning as L

    from wsss.data.datasets import ClassificationDataset
    from wsss.data.transforms import TrainTransform

    # --- train one epoch (2 steps) on 4 real training images with their true masks (source: gt)
    L.seed_everything(0, verbose=False)
    params = SegParams(source="gt", pretrained="none", crop_size=64, resize_long=(64, 96), batch_size=2, epochs=1)
    train = VOCLayout(msrc_root, "train", limit=4, check_files=False)
    tf = TrainTransform(crop_size=params.crop_size, resize_long=params.resize_long)
    ds = ClassificationDataset(train, tf, with_mask=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=params.batch_size, shuffle=True, drop_last=True)
    module = SegmentationModule(train.num_classes + 1, params)
    trainer = L.Trainer(max_epochs=params.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, loader)
    assert trainer.global_step == 2
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # poly decayed to 0 after the last step
    assert sched.get_last_lr()[1] == 0.0

    # --- save as a shippable model, evaluate on 3 val images
    run = tmp_path / "run"
    mean, std = tf.mean, tf.std
    save_segmentation_model(module.net, run, {"class_names": train.class_names, "mean": mean, "std": std})
    net, meta = load_segmentation_model(run)
    val = VOCLayout(msrc_root, "val", limit=3, check_files=False)
    variants = {"single": {}, "multiscale": {"scales": [1.0, 0.5], "flip": True},
                "multiscale_crf": {"scales": [1.0, 0.5], "flip": True, "crf": True, "save_dir": tmp_path / "pred"}}
    res = evaluate_segmentation_variants(net, val, variants, mean=mean, std=std, progress=False)
    for r in res.values():
        assert r["num_images"] == 3 and 0.0 <= r["miou"] <= 100.0 and len(r["per_class"]) == K_MSRC
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(f"{i}.png" for i in val.ids)

    # --- wsss predict: a folder of 3 val images, a 1000 x 700 image, a corrupt file, a missing path
    src = tmp_path / "images"
    src.mkdir()
    for i in val.ids:
        shutil.copy(val.image_path(i), src / val.image_path(i).name)
    big = np.random.default_rng(0).integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    broken = src / "zz_broken.jpg"
    broken.write_bytes(_jpeg(big[:50, :50])[:100])  # truncated JPEG
    err = io.StringIO()
    out = tmp_path / "out"
    failed = predict_images(run, [src, tmp_path / "big.png", tmp_path / "missing.jpg"], out, probs=True,
                            device="cpu", stderr=err)
    assert failed == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    assert any(ln.startswith(f"wsss: error: {broken}: cannot decode image") for ln in lines), lines
    assert any(ln.startswith(f"wsss: error: {tmp_path / 'missing.jpg'}: no such file") for ln in lines), lines
    for stem, image in [(i, val.image(i)) for i in val.ids] + [("big", big)]:
        mask = read_index_png(out / f"{stem}.png")
        assert mask.shape == image.shape[:2] and mask.max() < K_MSRC
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P"
        with Image.open(out / f"{stem}_overlay.jpg") as im:
            assert im.size == (image.shape[1], image.shape[0])
        with np.load(out / f"{stem}_probs.npz") as z:
            assert z["probs"].shape == (K_MSRC, *image.shape[:2]) and z["probs"].dtype == np.float16
            assert np.allclose(z["probs"].astype(np.float32).sum(0), 1.0, atol=1e-2)
            assert list(z["class_names"]) == train.class_names
    assert not (out / "zz_broken.png").exists()
    # the mask equals the argmax of a direct prediction (same normalisation as saved)
    direct = predict_probs(net, val.image(val.ids[0]), mean=mean, std=std).argmax(0)
    assert np.array_equal(read_index_png(out / f"{val.ids[0]}.png"), direct)
    # an output that would overwrite an input is refused, the rest still written
    err2 = io.StringIO()
    assert predict_images(run, [src / f"{val.ids[0]}.jpg"], src, device="cpu", stderr=err2) == 0
    png_in = tmp_path / "pngs"
    png_in.mkdir()
    Image.fromarray(big[:40, :60]).save(png_in / "p.png")
    assert predict_images(run, [png_in], png_in, device="cpu", stderr=err2) == 1
    assert "would overwrite an input image" in err2.getvalue()

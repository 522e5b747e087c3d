"""The CAM recipe's building blocks, pinned (issue: faithful recipes).

Optimiser construction (momentum, weight decay, lr groups), the IRN SGD quirk, classifier
initialisation schemes, the CAM feature layer, input normalisation and the unlabelled-image
switch. Numbers are hand-computed from the definitions cited in each test.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from wsss.config import load_config
from wsss.data.transforms import NORMALIZATIONS, normalization_stats, normalize
from wsss.methods.base import CLASSIFIER_INITS, WSSSModule, build_cam_net, init_classifier


def _module(overrides: dict) -> WSSSModule:
    cfg = load_config("configs/msrc/cam.yaml", {"model.pretrained": "none", **overrides})
    module = WSSSModule(cfg, num_classes=16)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)  # what make_optimizer reads
    return module


@pytest.mark.parametrize("momentum, lr", [(0.9, 0.1), (1e-4, 0.1), (0.9, 0.01)])
def test_optimizer_groups_follow_the_config(momentum, lr):
    module = _module({"optim.momentum": momentum, "optim.lr": lr, "optim.weight_decay": 1e-4, "optim.new_lr_mult": 10.0})
    out = module.configure_optimizers()
    opt = out["optimizer"]
    assert isinstance(opt, torch.optim.SGD)
    assert len(opt.param_groups) == 2
    backbone, new = opt.param_groups
    # backbone at lr, the classifier (new layer) at lr x new_lr_mult (IRN: x10)
    assert backbone["lr"] == pytest.approx(lr) and new["lr"] == pytest.approx(10 * lr)
    for g in opt.param_groups:
        assert g["momentum"] == pytest.approx(momentum)
        assert g["weight_decay"] == pytest.approx(1e-4)
        assert g["nesterov"] is False
    # the classifier is exactly the new group; frozen stem / BN parameters are in no group
    assert {id(p) for p in new["params"]} == {id(module.net.classifier.weight)}
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = [p for p in module.net.parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in grouped for p in frozen)
    # poly schedule: factor (1 - step/total)^0.9 after 50 of 100 steps
    sched = out["lr_scheduler"]["scheduler"]
    for _ in range(50):
        opt.step()
        sched.step()
    assert backbone["lr"] == pytest.approx(lr * 0.5**0.9, rel=1e-6)


def test_irn_sgd_quirk_is_what_positional_sgd_does():
    """IRN's PolyOptimizer calls SGD(params, lr, weight_decay): the 3rd positional argument of
    torch.optim.SGD is momentum, so the authors ran momentum 1e-4 and no optimizer-level weight
    decay (reference-notes, 'The SGD quirk'). This pins the fact the recipe relies on."""
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], 0.1, 1e-4)
    assert opt.defaults["momentum"] == pytest.approx(1e-4)
    assert opt.defaults["weight_decay"] == 0
    # effective step of heavy-ball SGD on a constant gradient: lr / (1 - momentum)
    g = torch.ones(3)
    for m, lr, expect in [(0.9, 0.1, 1.0), (1e-4, 0.1, 0.1 / (1 - 1e-4)), (0.9, 0.01, 0.1)]:
        q = nn.Parameter(torch.zeros(3))
        o = torch.optim.SGD([q], lr=lr, momentum=m)
        for _ in range(400):
            q.grad = g.clone()
            o.step()
        q0 = q.detach().clone()
        q.grad = g.clone()
        o.step()
        assert float((q0 - q.detach())[0]) == pytest.approx(expect, rel=1e-3)


@pytest.mark.parametrize(
    "scheme, std",
    [
        ("kaiming_fan_out", math.sqrt(2 / 16)),  # N(0, 2 / fan_out), fan_out = 16 classes
        ("kaiming_fan_in", math.sqrt(2 / 1280)),  # N(0, 2 / fan_in)
        ("torch_default", 1 / math.sqrt(1280) / math.sqrt(3)),  # U(-1/sqrt(D), 1/sqrt(D))
        ("xavier", math.sqrt(2 / (1280 + 16))),  # Xavier-uniform std
    ],
)
def test_classifier_init_scale(scheme, std):
    torch.manual_seed(0)
    w = torch.empty(16, 1280, 1, 1)
    init_classifier(w, scheme)
    assert float(w.std()) == pytest.approx(std, rel=0.03)
    assert abs(float(w.mean())) < 3 * std / math.sqrt(w.numel()) + 1e-6
    if scheme in ("torch_default", "xavier"):  # uniform: bounded
        bound = std * math.sqrt(3)
        assert float(w.abs().max()) <= bound + 1e-7


def test_classifier_init_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="classifier_init"):
        init_classifier(torch.empty(2, 3, 1, 1), "he")
    assert set(CLASSIFIER_INITS) == {"kaiming_fan_out", "kaiming_fan_in", "torch_default", "xavier"}


def test_torch_default_matches_a_fresh_conv2d():
    torch.manual_seed(1)
    a = nn.Conv2d(320, 16, 1, bias=False).weight.detach().clone()
    torch.manual_seed(1)
    b = torch.empty(16, 320, 1, 1)
    init_classifier(b, "torch_default")
    assert torch.equal(a, b)


def test_feature_layer_last_stage_uses_the_320_channel_block_output():
    cfg = load_config("configs/msrc/cam.yaml", {"model.pretrained": "none"})
    head = build_cam_net(cfg.model, 16, feature_layer="head")
    last = build_cam_net(cfg.model, 16, feature_layer="last_stage")
    assert head.classifier.in_channels == 1280 and last.classifier.in_channels == 320
    # the pruned head leaves no unused parameter behind (DDP would complain about it)
    assert not any("conv_head" in n or n.startswith("backbone.model.bn2") for n, _ in last.named_parameters())
    x = torch.randn(1, 3, 64, 96)
    logits, cams = last.eval()(x)
    assert logits.shape == (1, 16) and cams.shape == (1, 16, 4, 6)
    # the last-stage map is what timm returns as the final intermediate of the same network
    with torch.no_grad():
        ref = last.backbone.model.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
        assert torch.allclose(last.backbone(x), ref)
    with pytest.raises(ValueError, match="feature_layer"):
        build_cam_net(cfg.model, 16, feature_layer="stage3")


def test_normalizations():
    img = np.full((2, 2, 3), 255, np.uint8)
    mean, std = normalization_stats("inception")
    assert torch.allclose(normalize(img, mean, std), torch.ones(3, 2, 2))  # (1 - 0.5) / 0.5
    img0 = np.zeros((2, 2, 3), np.uint8)
    assert torch.allclose(normalize(img0, *normalization_stats("inception")), -torch.ones(3, 2, 2))
    m, s = NORMALIZATIONS["imagenet"]
    out = normalize(img0, m, s)
    assert float(out[0, 0, 0]) == pytest.approx(-0.485 / 0.229)
    with pytest.raises(ValueError, match="normalization"):
        normalization_stats("tf")


def test_unlabelled_images_can_be_left_out_of_training(msrc_root):
    from wsss.data.datasets import ClassificationDataset
    from wsss.data.voc import VOCLayout

    layout = VOCLayout(msrc_root, "train", check_files=False)
    labels = layout.labels_matrix()
    empty = int((labels.sum(1) == 0).sum())
    assert empty == 61  # MSRC train: 61 images whose masks hold no object class (issue 8, point 5)
    assert len(ClassificationDataset(layout)) == len(layout) == 354
    ds = ClassificationDataset(layout, skip_unlabelled=True)
    assert len(ds) == 354 - 61
    assert all(float(ds[i]["label"].sum()) > 0 for i in range(0, len(ds), 37))


@pytest.mark.parametrize("bn_mode, frozen_stats", [("frozen", True), ("batch_stats", False), ("trainable", False)])
def test_bn_mode_survives_a_lightning_fit(bn_mode, frozen_stats):
    """Lightning >= 2.2 does not call .train() when fit starts; 'frozen' BatchNorm must still keep
    its running statistics (it silently did not before 2026-11-23: wsss trained in batch_stats)."""
    import lightning as L

    cfg = load_config("configs/msrc/cam.yaml", {"model.pretrained": "none"})
    cfg = load_config("configs/msrc/cam.yaml", {"model.pretrained": "none", "model.bn_mode": bn_mode})
    module = WSSSModule(cfg, num_classes=4)
    bn = [m for m in module.net.modules() if isinstance(m, nn.BatchNorm2d)][5]
    before = bn.running_mean.clone()
    ds = [{"image": torch.randn(3, 64, 64), "label": torch.ones(4)} for _ in range(4)]
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(ds, batch_size=2))
    assert (int(bn.num_batches_tracked) == 0) == frozen_stats
    assert torch.equal(bn.running_mean, before) == frozen_stats
    assert bn.weight.requires_grad == (bn_mode == "trainable")


def test_a_nan_loss_stops_training_with_one_line():
    from wsss.methods.base import TrainingDiverged, check_finite

    check_finite(torch.tensor(0.5), 3)
    with pytest.raises(TrainingDiverged, match="diverged at step 7: loss nan"):
        check_finite(torch.tensor(float("nan")), 7)
    assert issubclass(TrainingDiverged, ValueError)  # printed as 'wsss: error: ...' by the CLI

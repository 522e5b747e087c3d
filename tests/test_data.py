"""Data layer: VOCLayout on the real MSRC folder and on broken copies, transforms, datasets, COCO."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC_CLASSES,
    ClassificationDataset,
    DatasetError,
    ImageDataset,
    TrainTransform,
    VOCLayout,
    denormalize,
    normalize,
)
from wsss.io import read_index_png, save_palette_png

MSRC_CLASSES = [
    "background", "cow", "horse", "sheep", "aeroplane", "face", "car", "bicycle", "flower",
    "sign", "bird", "book", "chair", "cat", "dog", "body", "boat",
]  # fmt: skip


# ----------------------------------------------------------------------------- real MSRC
@pytest.fixture(scope="module")
def msrc_train(msrc_root) -> VOCLayout:
    return VOCLayout(msrc_root, "train")


@pytest.fixture(scope="module")
def msrc_val(msrc_root) -> VOCLayout:
    return VOCLayout(msrc_root, "val")


def test_msrc_splits_and_classes(msrc_train, msrc_val):
    assert len(msrc_train) == 354 and len(msrc_train.ids) == 354
    assert len(msrc_val) == 118
    assert not set(msrc_train.ids) & set(msrc_val.ids)
    assert msrc_train.num_classes == 16
    assert msrc_train.class_names == MSRC_CLASSES
    assert msrc_train.has_masks and msrc_val.has_masks
    assert msrc_train.labels_matrix().shape == (354, 16)
    assert msrc_train.labels_matrix().dtype == np.float32
    # README: horse has only 3 training images; some images have no foreground at all.
    assert msrc_train.labels_matrix()[:, MSRC_CLASSES.index("horse") - 1].sum() == 3
    assert (msrc_train.labels_matrix().sum(1) == 0).any()


def test_msrc_known_label(msrc_val):
    # By hand from ImageSets/Main/*_val.txt: 19_18_s is "1" in face, car and body only.
    expected = np.zeros(16, dtype=np.float32)
    expected[[5 - 1, 6 - 1, 15 - 1]] = 1.0  # face=5, car=6, body=15
    lab = msrc_val.label("19_18_s")
    assert lab.dtype == np.float32 and lab.shape == (16,)
    np.testing.assert_array_equal(lab, expected)
    # multi-hot row order follows ids
    np.testing.assert_array_equal(msrc_val.labels_matrix()[msrc_val.ids.index("19_18_s")], expected)
    with pytest.raises(KeyError):
        msrc_val.label("not_an_id")


def test_msrc_images_and_masks(msrc_val):
    allowed = set(range(17)) | {255}
    for image_id in msrc_val.ids[:40]:
        img = msrc_val.image(image_id)
        m = msrc_val.mask(image_id)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert m.dtype == np.uint8 and m.shape == img.shape[:2]
        assert set(np.unique(m).tolist()) <= allowed
        # image-level labels agree with the classes present in the mask (MSRC property)
        present = sorted(set(np.unique(m).tolist()) - {0, 255})
        assert sorted((np.flatnonzero(msrc_val.label(image_id)) + 1).tolist()) == present
    assert msrc_val.image("19_18_s").shape == (320, 240, 3)  # 240x320 portrait (W x H)
    assert msrc_val.image_path("19_18_s").name == "19_18_s.jpg"
    assert msrc_val.mask_path("19_18_s").parent.name == "SegmentationClass"


def test_msrc_check_files_fast_and_limit(msrc_root):
    t0 = time.perf_counter()
    tr = VOCLayout(msrc_root, "train", check_files=True)
    va = VOCLayout(msrc_root, "val", check_files=True)
    assert time.perf_counter() - t0 < 3.0
    assert len(tr) + len(va) == 472
    small = VOCLayout(msrc_root, "train", limit=5)
    assert small.ids == tr.ids[:5]
    np.testing.assert_array_equal(small.labels_matrix(), tr.labels_matrix()[:5])
    clone = pickle.loads(pickle.dumps(small))
    assert clone.ids == small.ids and clone.root == small.root
    np.testing.assert_array_equal(clone.label(small.ids[0]), small.label(small.ids[0]))


# ----------------------------------------------------------------------------- mini copies
MINI_IDS = ["10_10_s", "10_12_s", "10_13_s", "10_14_s"]


def _make_mini(src: Path, dst: Path, ids=MINI_IDS, split="train") -> Path:
    """Copy a few MSRC images + masks + labels into a fresh VOC folder."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages")
        shutil.copy(src / "SegmentationClass" / f"{i}.png", dst / "SegmentationClass")
    shutil.copy(src / "classes.txt", dst / "classes.txt")
    (dst / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for name in MSRC_CLASSES[1:]:
        lines = [
            ln for ln in (src / "ImageSets/Main" / f"{name}_train.txt").read_text().splitlines()
            if ln.split()[0] in ids
        ]
        (dst / "ImageSets/Main" / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture()
def mini(msrc_root, tmp_path) -> Path:
    return _make_mini(msrc_root, tmp_path / "mini")


def _raises_naming(path: Path, fn, *words: str) -> str:
    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)), msg
    for w in words:
        assert w in msg, msg
    return msg


def test_mini_reads_like_original(mini, msrc_train):
    lay = VOCLayout(mini, "train")
    assert lay.ids == MINI_IDS
    for i in MINI_IDS:
        np.testing.assert_array_equal(lay.label(i), msrc_train.label(i))
        np.testing.assert_array_equal(lay.mask(i), msrc_train.mask(i))
    # 10_10_s: flower only (class 8, vector index 7), by hand from flower_train.txt
    np.testing.assert_array_equal(np.flatnonzero(lay.label("10_10_s")), [7])


def test_corrupt_jpeg(mini):
    bad = mini / "JPEGImages" / "10_12_s.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: header fine, scan data cut
    _raises_naming(bad, lambda: VOCLayout(mini, "train"), "corrupt")
    lay = VOCLayout(mini, "train", check_files=False)
    _raises_naming(bad, lambda: lay.image("10_12_s"))
    bad.write_bytes(b"not a jpeg at all")
    _raises_naming(bad, lambda: VOCLayout(mini, "train", check_files="header"))


def test_missing_image(mini):
    p = mini / "JPEGImages" / "10_13_s.jpg"
    p.unlink()
    _raises_naming(p, lambda: VOCLayout(mini, "train"), "not found")


def test_missing_mask(mini):
    p = mini / "SegmentationClass" / "10_13_s.png"
    p.unlink()
    _raises_naming(p, lambda: VOCLayout(mini, "train"), "missing")
    lay = VOCLayout(mini, "train", check_files=False)
    _raises_naming(p, lambda: lay.mask("10_13_s"))


def test_mask_wrong_size(mini):
    p = mini / "SegmentationClass" / "10_14_s.png"
    m = read_index_png(p)
    save_palette_png(p, m[:-7, :])
    _raises_naming(p, lambda: VOCLayout(mini, "train"), "size")


def test_no_masks_at_all_is_fine(mini):
    shutil.rmtree(mini / "SegmentationClass")
    lay = VOCLayout(mini, "train")
    assert not lay.has_masks and len(lay) == 4


def test_id_without_label(mini):
    split = mini / "ImageSets/Segmentation/train.txt"
    shutil.copy(mini / "JPEGImages/10_14_s.jpg", mini / "JPEGImages/extra.jpg")
    shutil.copy(mini / "SegmentationClass/10_14_s.png", mini / "SegmentationClass/extra.png")
    split.write_text(split.read_text() + "extra\n")
    _raises_naming(split, lambda: VOCLayout(mini, "train"), "image id extra has no image-level label")


def test_unknown_class_file(mini):
    p = mini / "ImageSets/Main/zebra_train.txt"
    p.write_text("10_10_s 1\n")
    _raises_naming(p, lambda: VOCLayout(mini, "train"), "unknown class", "zebra")


def _write_xml(path: Path, names, difficult=()):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(n in difficult)}</difficult></object>" for n in names
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objs}</annotation>")


def test_xml_labels_and_unknown_class(mini):
    for p in (mini / "ImageSets/Main").glob("*.txt"):
        p.unlink()
    ann = mini / "Annotations"
    _write_xml(ann / "10_10_s.xml", ["cow", "cow", "dog"])
    _write_xml(ann / "10_12_s.xml", ["boat"], difficult=["boat"])
    _write_xml(ann / "10_13_s.xml", [])
    _write_xml(ann / "10_14_s.xml", ["sheep"])
    lay = VOCLayout(mini, "train")
    np.testing.assert_array_equal(np.flatnonzero(lay.label("10_10_s")), [0, 13])  # cow=1, dog=14
    np.testing.assert_array_equal(np.flatnonzero(lay.label("10_12_s")), [15])  # boat=16
    assert lay.label("10_13_s").sum() == 0
    _write_xml(ann / "10_14_s.xml", ["sheep", "unicorn"])
    _raises_naming(ann / "10_14_s.xml", lambda: VOCLayout(mini, "train"), "unknown class", "unicorn")
    (ann / "10_14_s.xml").unlink()
    _raises_naming(mini / "ImageSets/Segmentation/train.txt", lambda: VOCLayout(mini, "train"), "10_14_s")


def test_difficult_zero_counts_as_present(mini):
    p = mini / "ImageSets/Main/cow_train.txt"
    p.write_text(p.read_text().replace("10_13_s -1", "10_13_s 0"))
    lay = VOCLayout(mini, "train")
    assert lay.label("10_13_s")[0] == 1.0


def test_no_label_source(mini):
    for p in (mini / "ImageSets/Main").glob("*.txt"):
        p.unlink()
    with pytest.raises(DatasetError, match="no image-level label"):
        VOCLayout(mini, "train")


def test_voc_defaults_without_classes_txt(mini):
    (mini / "classes.txt").unlink()
    for p in (mini / "ImageSets/Main").glob("*.txt"):
        p.unlink()
    for i in MINI_IDS:
        _write_xml(mini / "Annotations" / f"{i}.xml", ["person", "tvmonitor"])
    lay = VOCLayout(mini, "train", check_files=False)
    assert lay.class_names == VOC_CLASSES and lay.num_classes == 20
    np.testing.assert_array_equal(np.flatnonzero(lay.label("10_10_s")), [14, 19])


def test_train_aug_masks_and_fallback_labels(mini):
    aug = mini / "SegmentationClassAug"
    aug.mkdir()
    for i in MINI_IDS:
        m = read_index_png(mini / "SegmentationClass" / f"{i}.png")
        m[m == 255] = 0  # SBD-style mask: no void border, so it differs from the VOC one
        save_palette_png(aug / f"{i}.png", m)
    (mini / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(MINI_IDS[:3]) + "\n")
    lay = VOCLayout(mini, "train_aug")  # no *_train_aug.txt, no XML -> <class>_train.txt
    ref = VOCLayout(mini, "train")
    assert lay.mask_path("10_10_s").parent.name == "SegmentationClassAug"
    np.testing.assert_array_equal(lay.labels_matrix(), ref.labels_matrix()[:3])
    # auto: plain split uses SegmentationClass unless that file is missing
    (mini / "SegmentationClass/10_12_s.png").unlink()
    plain = VOCLayout(mini, "train")
    assert plain.mask_path("10_10_s").parent.name == "SegmentationClass"
    assert plain.mask_path("10_12_s").parent.name == "SegmentationClassAug"
    explicit = VOCLayout(mini, "train", mask_dir="SegmentationClassAug")
    assert explicit.mask_path("10_10_s") == aug / "10_10_s.png"


def test_grey_and_cmyk_images_become_rgb(mini):
    p = mini / "JPEGImages" / "10_10_s.jpg"
    with Image.open(p) as im:
        rgb = im.convert("RGB")
    rgb.convert("L").save(p, quality=95)
    lay = VOCLayout(mini, "train")
    g = lay.image("10_10_s")
    assert g.shape == (213, 320, 3) and g.dtype == np.uint8
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    rgb.convert("CMYK").save(p, quality=95)
    c = VOCLayout(mini, "train").image("10_10_s")
    assert c.shape == (213, 320, 3)
    assert np.abs(c.astype(int) - np.asarray(rgb, dtype=int)).mean() < 12


# ----------------------------------------------------------------------------- transforms
def test_normalize_hand_computed():
    img = np.array([[[255, 0, 128]]], dtype=np.uint8)
    x = normalize(img)
    assert x.shape == (3, 1, 1) and x.dtype == torch.float32
    exp = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[:, 0, 0].numpy(), exp, rtol=1e-6)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError):
        normalize(np.zeros((4, 4), dtype=np.uint8))


def _coord_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy % 256, xx % 256, (yy // 256) * 16 + xx // 256], -1).astype(np.uint8)


def test_padding_when_image_smaller():
    h, w = 60, 100
    img = _coord_image(h, w)
    mask = (np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
    t = TrainTransform(crop_size=128, resize_long=None, hflip=False)
    out = t(img, mask, rng=0)
    x, m, v = out["image"], out["mask"], out["valid"]
    assert x.shape == (3, 128, 128) and x.dtype == torch.float32
    assert m.shape == (128, 128) and m.dtype == torch.int64
    assert v.shape == (128, 128) and v.dtype == torch.float32
    assert v.sum().item() == h * w
    assert (x[:, v == 0] == 0).all()  # zero after normalisation = mean colour
    assert (m[v == 0] == 255).all()
    ys, xs = torch.nonzero(v, as_tuple=True)
    y0, x0 = ys.min().item(), xs.min().item()
    assert (ys.max().item() - y0 + 1, xs.max().item() - x0 + 1) == (h, w)
    np.testing.assert_array_equal(denormalize(x)[y0 : y0 + h, x0 : x0 + w], img)
    np.testing.assert_array_equal(m[y0 : y0 + h, x0 : x0 + w].numpy(), mask)


def test_crop_is_a_window_when_image_larger():
    h, w = 200, 300
    img = _coord_image(h, w)
    t = TrainTransform(crop_size=64, resize_long=None, hflip=False)
    for seed in range(5):
        out = t(img, None, rng=seed)
        assert out["mask"] is None and out["valid"].all()
        crop = denormalize(out["image"]).astype(int)
        y0, x0 = crop[0, 0, 0], crop[0, 0, 1] + 256 * (crop[0, 0, 2] % 16)
        np.testing.assert_array_equal(crop, img[y0 : y0 + 64, x0 : x0 + 64].astype(int))


def test_resize_long_range_and_flip_consistency(msrc_val):
    img = msrc_val.image("19_18_s")  # 320 x 240 (H x W)
    mask = (img[..., 0] > 128).astype(np.uint8)
    # blocky, left/right-asymmetric image whose mask is its red channel: any image/mask
    # misalignment (flip of one but not the other, different scale) shows up
    yy, xx = np.mgrid[0:320, 0:240]
    blocks = (((yy // 40) + (xx // 30) ** 2) % 3 == 0).astype(np.uint8)
    synth = np.stack([blocks * 255, np.full_like(blocks, 60), (xx * 255 // 239)], -1).astype(np.uint8)
    t = TrainTransform(crop_size=448, resize_long=(240, 400), hflip=True)
    longs = set()
    for seed in range(12):
        out = t(synth, blocks, rng=seed)
        v = out["valid"] > 0
        ys, xs = torch.nonzero(v, as_tuple=True)
        hh, ww = ys.max().item() - ys.min().item() + 1, xs.max().item() - xs.min().item() + 1
        assert 240 <= max(hh, ww) <= 400
        assert abs(ww / hh - 240 / 320) < 0.02
        longs.add(max(hh, ww))
        red = denormalize(out["image"])[..., 0]
        agree = ((red > 128) == (out["mask"].numpy() == 1))[v.numpy()].mean()
        assert agree > 0.98, agree  # bilinear vs nearest differ only on block edges
    assert len(longs) > 3
    # exact check without rescaling: flipped image and mask stay aligned, and both flip states occur
    t2 = TrainTransform(crop_size=400, resize_long=None, hflip=True)
    seen = set()
    for seed in range(10):
        out = t2(img, mask, rng=seed)
        v = out["valid"] > 0
        ys, xs = torch.nonzero(v, as_tuple=True)
        y0, x0 = ys.min().item(), xs.min().item()
        got_img = denormalize(out["image"])[y0 : y0 + 320, x0 : x0 + 240]
        got_mask = out["mask"].numpy()[y0 : y0 + 320, x0 : x0 + 240]
        flipped = np.array_equal(got_img, img[:, ::-1])
        assert flipped or np.array_equal(got_img, img)
        np.testing.assert_array_equal(got_mask, mask[:, ::-1] if flipped else mask)
        seen.add(flipped)
    assert seen == {True, False}


def test_transform_determinism_and_jitter(msrc_val):
    img = msrc_val.image("19_18_s")
    mask = msrc_val.mask("19_18_s")
    cj = dict(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)
    t = TrainTransform(crop_size=256, color_jitter=cj)
    a = t(img, mask, rng=np.random.default_rng(7))
    b = t(img, mask, generator=np.random.default_rng(7))
    for k in ("image", "mask", "valid"):
        assert torch.equal(a[k], b[k])
    c = t(img, mask, rng=np.random.default_rng(8))
    assert not torch.equal(a["image"], c["image"])
    # jitter changes colours only: same geometry as the un-jittered transform with the same seed
    plain = TrainTransform(crop_size=256, color_jitter=dict(brightness=0.0))
    p = plain(img, mask, rng=3)
    j = TrainTransform(crop_size=256, color_jitter=dict(brightness=(1.4, 1.5)))(img, mask, rng=3)
    assert torch.equal(p["mask"], j["mask"]) and torch.equal(p["valid"], j["valid"])
    v = p["valid"] > 0
    assert denormalize(j["image"])[v.numpy()].astype(float).mean() > denormalize(p["image"])[v.numpy()].astype(float).mean() + 10
    with pytest.raises(ValueError):
        TrainTransform(color_jitter=dict(sharpness=1.0))


# ----------------------------------------------------------------------------- datasets
def test_classification_dataset(msrc_root):
    lay = VOCLayout(msrc_root, "val", limit=4)
    ds = ClassificationDataset(lay, TrainTransform(crop_size=96), with_mask=True)
    torch.manual_seed(0)
    a = ds[1]
    torch.manual_seed(0)
    b = ds[1]
    assert set(a) == {"image", "label", "id", "mask", "valid"}
    assert a["image"].shape == (3, 96, 96) and a["label"].dtype == torch.float32
    assert a["id"] == lay.ids[1]
    np.testing.assert_array_equal(a["label"].numpy(), lay.label(lay.ids[1]))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(ds[1]["image"], a["image"])  # next draw differs
    plain = ClassificationDataset(lay, TrainTransform(crop_size=96))
    assert set(plain[0]) == {"image", "label", "id", "valid"}
    loader = torch.utils.data.DataLoader(plain, batch_size=2, num_workers=2)
    torch.manual_seed(1)
    e1 = [bt["image"] for bt in loader]
    torch.manual_seed(1)
    e2 = [bt["image"] for bt in loader]
    e3 = [bt["image"] for bt in loader]
    assert e1[0].shape == (2, 3, 96, 96)
    assert all(torch.equal(x, y) for x, y in zip(e1, e2))  # reproducible under a seed
    assert not all(torch.equal(x, y) for x, y in zip(e2, e3))  # epochs differ


def test_image_dataset_collate(msrc_root):
    lay = VOCLayout(msrc_root, "val", limit=3)
    ds = ImageDataset(lay, with_mask=True)
    item = ds[0]
    assert isinstance(item["image"], np.ndarray) and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["image"], lay.image(lay.ids[0]))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ImageDataset.collate)
    batch = next(iter(loader))
    assert batch["id"] == lay.ids
    assert [im.shape for im in batch["image"]] == [lay.image(i).shape for i in lay.ids]
    assert all(m.shape == im.shape[:2] for m, im in zip(batch["mask"], batch["image"]))
    np.testing.assert_array_equal(np.stack(batch["label"]), lay.labels_matrix())


# ----------------------------------------------------------------------------- COCO
def test_coco_to_voc_layout(tmp_path):
    pytest.importorskip("pycocotools")
    from wsss.data.coco import coco_to_voc_layout

    imgs = tmp_path / "train2014"
    imgs.mkdir()
    for name, (w, h) in {"a.jpg": (40, 30), "b.jpg": (20, 20), "c.jpg": (10, 10)}.items():
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(imgs / name)

    def rect(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.jpg", "width": 20, "height": 20},
            {"id": 3, "file_name": "c.jpg", "width": 10, "height": 10},  # no annotations
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 10, "name": "traffic light"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": rect(0, 0, 20, 20), "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 18, "segmentation": rect(10, 10, 30, 25), "area": 300, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 10, "segmentation": rect(5, 5, 15, 15), "area": 100, "iscrowd": 0},
        ],
    }
    js = tmp_path / "instances.json"
    js.write_text(json.dumps(data))
    dest = tmp_path / "coco_voc"
    coco_to_voc_layout(js, imgs, dest, "train")
    lay = VOCLayout(dest, "train")
    # category ids sorted: person(1)=1, traffic light(10)=2, dog(18)=3
    assert lay.class_names == ["background", "person", "traffic light", "dog"]
    assert lay.ids == ["a", "b"]
    assert (dest / "JPEGImages/a.jpg").is_symlink()
    assert (dest / "ImageSets/Main/traffic_light_train.txt").is_file()
    np.testing.assert_array_equal(lay.label("a"), [1, 0, 1])
    np.testing.assert_array_equal(lay.label("b"), [0, 1, 0])
    m = lay.mask("a")
    assert m.shape == (30, 40)
    assert m[5, 5] == 1 and m[22, 25] == 3 and m[28, 38] == 0
    assert m[15, 15] == 255  # person/dog overlap -> ignore
    assert lay.mask("b")[10, 10] == 2 and lay.mask("b")[1, 1] == 0
    dest2 = tmp_path / "coco_voc2"
    coco_to_voc_layout(js, imgs, dest2, "train", overlap="larger_first", skip_empty=False)
    lay2 = VOCLayout(dest2, "train")
    assert lay2.ids == ["a", "b", "c"] and lay2.label("c").sum() == 0
    assert lay2.mask("a")[15, 15] == 3  # smaller dog painted over the larger person

"""The COCO path on real photographs (issue 11): an MSRC split exported as a COCO instances JSON
(pycocotools RLE), read back through ``wsss data coco`` (:func:`wsss.data.coco.coco_to_voc_layout`)
and run through the tiny pipeline, segmentation included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsss.cli import main
from wsss.data.voc import VOCLayout

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs/msrc/cam.yaml")


@pytest.fixture(scope="module")
def coco(tmp_path_factory, msrc_root):
    """MSRC train (first 12 ids) and val (first 8) as COCO JSON, converted back to a VOC layout."""
    tmp = tmp_path_factory.mktemp("coco_msrc")
    dest = tmp / "voc_from_coco"
    for split, n in (("train", 12), ("val", 8)):
        js = tmp / f"instances_{split}.json"
        assert main(["data", "to-coco", "--root", str(msrc_root), "--split", split, "--limit", str(n), "--output", str(js)]) == 0
        assert main(["data", "coco", "--instances", str(js), "--images", str(msrc_root / "JPEGImages"),
                     "--dest", str(dest), "--split", split]) == 0
    return tmp, dest


def test_json_is_coco_with_rle_masks_of_the_true_classes(coco, msrc_root):
    tmp, _ = coco
    data = json.loads((tmp / "instances_train.json").read_text())
    src = VOCLayout(msrc_root, "train", limit=12)
    assert [c["name"] for c in data["categories"]] == list(src.class_names[1:])
    assert len(data["images"]) == 12
    for im, image_id in zip(data["images"], src.ids):
        mask = src.mask(image_id)
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        assert sorted(a["category_id"] for a in anns) == sorted(int(v) for v in np.unique(mask) if 0 < v < 255)
        for a in anns:
            decoded = mask_utils.decode(a["segmentation"]).astype(bool)
            assert np.array_equal(decoded, mask == a["category_id"])
            assert a["area"] == pytest.approx(decoded.sum())


def test_round_trip_keeps_masks_and_labels(coco, msrc_root):
    _, dest = coco
    for split, n in (("train", 12), ("val", 8)):
        src = VOCLayout(msrc_root, split, limit=n)
        back = VOCLayout(dest, split)
        assert list(back.class_names) == list(src.class_names)
        with_objects = [i for i in src.ids if src.label(i).any()]
        assert list(back.ids) == with_objects  # images without an object class have no annotation
        for i in with_objects:
            a, b = src.mask(i), back.mask(i)
            keep = a != 255
            assert np.array_equal(a[keep], b[keep]) and (b[~keep] == 0).all()  # void -> background
            assert np.array_equal(src.label(i), back.label(i))


def test_pipeline_with_segmentation_runs_on_the_coco_layout(coco, tmp_path):
    _, dest = coco
    out = tmp_path / "run"
    args = ["pipeline", "--config", CFG, "--data.root", str(dest), "--output_dir", str(out),
            "--data.limit", "8", "--trainer.max_epochs", "1", "--data.crop_size", "96", "--data.resize_long", "[96, 128]",
            "--data.batch_size", "4", "--data.num_workers", "0", "--inference.scales", "[1.0]", "--inference.flip", "false",
            "--refine.workers", "1", "--report.num_samples", "2", "--trainer.accelerator", "cpu",
            "--segmentation.enabled", "true", "--segmentation.epochs", "1", "--segmentation.batch_size", "4",
            "--segmentation.crop_size", "96", "--segmentation.resize_long", "[96, 128]", "--segmentation.eval_scales", "[1.0]",
            "--segmentation.crf", "false", "--segmentation.eval_splits", "[val]"]
    assert main(args) == 0
    seeds = json.loads((out / "metrics/seeds.json").read_text())
    assert seeds["num_images"] == 8 and 0 <= seeds["miou"] <= 100
    seg = json.loads((out / "metrics/segmentation.json").read_text())
    assert seg["split"] == "val" and 0 <= seg["variants"]["single"]["miou"] <= 100
    assert (out / "report/index.html").is_file()

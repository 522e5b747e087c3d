"""Tests for wsss.report: overlays, plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from wsss.evaluation.seeds import cam_to_seed
from wsss.inference.store import CamRecord, cam_path, save_cam
from wsss.io import save_palette_png, voc_palette, write_json
from wsss.report import (
    build_report,
    cam_overlay,
    format_number,
    format_percent,
    format_ratio,
    format_threshold,
    label_strip,
    mask_overlay,
    panel,
    rounds_plot,
    save_png,
    sweep_plot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
H, W = 30, 40


def _image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- overlays


def test_cam_overlay_shape_dtype_and_resize():
    img = _image()
    out = cam_overlay(img, np.random.default_rng(1).random((H, W)).astype(np.float32))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    small = cam_overlay(img, np.ones((8, 10), np.float32), alpha=1.0)  # resized to the image
    assert small.shape == (H, W, 3) and small.dtype == np.uint8


def test_cam_overlay_alpha0_is_image():
    img = _image(2)
    cam = np.random.default_rng(3).random((H, W))
    assert np.array_equal(cam_overlay(img, cam, alpha=0.0), img)


def test_cam_overlay_alpha1_ones_gives_top_colour():
    img = _image(4)
    out = cam_overlay(img, np.ones((H, W), np.float32), alpha=1.0, cmap="jet")
    top = np.asarray(matplotlib.colormaps["jet"](1.0, bytes=True)[:3], dtype=np.uint8)
    assert (out == top).all()
    # jet's top colour is (0.5, 0, 0): dark red, 0.5 * 255 = 127.5
    assert abs(int(out[0, 0, 0]) - 127.5) <= 1 and out[0, 0, 1] == 0 and out[0, 0, 2] == 0


def test_cam_overlay_half_blend_hand_computed():
    img = np.full((2, 2, 3), 100, np.uint8)
    out = cam_overlay(img, np.ones((2, 2)), alpha=0.5, cmap="gray")  # gray(1) = white
    assert (out == 178).all()  # 0.5 * 100 + 0.5 * 255 = 177.5 -> 178 (round half to even)


def test_cam_overlay_bad_input():
    with pytest.raises(ValueError):
        cam_overlay(_image(), np.ones((2, H, W)))
    with pytest.raises(ValueError):
        cam_overlay(_image(), np.ones((H, W)), alpha=1.5)


def test_mask_overlay_background_kept_and_colours():
    img = np.full((H, W, 3), 100, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[:10, :10] = 1
    mask[20:, 30:] = 255
    out = mask_overlay(img, mask, alpha=0.5)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    bg = mask == 0
    assert np.array_equal(out[bg], img[bg])
    # class 1 = VOC (128, 0, 0): 0.5*100 + 0.5*128 = 114, 0.5*100 = 50
    assert (out[:10, :10] == np.array([114, 50, 50], np.uint8)).all()
    full = mask_overlay(img, mask, alpha=1.0)
    assert (full[25, 35] == voc_palette()[255]).all()
    assert tuple(voc_palette()[255]) == (224, 224, 192)


def test_mask_overlay_real_image_background(msrc_root):
    from wsss.io import read_index_png

    for image_id in ("10_1_s", "11_12_s"):  # train images with background (0) and a flower / sign
        img = np.asarray(Image.open(msrc_root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        mask = read_index_png(msrc_root / "SegmentationClass" / f"{image_id}.png")
        assert (mask == 0).mean() > 0.2
        out = mask_overlay(img, mask)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(out[mask == 0], img[mask == 0])
        fg = (mask != 0) & (mask != 255)
        assert fg.mean() > 0.05
        colour = voc_palette()[mask[fg]].astype(np.float32)
        expected = np.rint(0.4 * img[fg].astype(np.float32) + 0.6 * colour).astype(np.uint8)
        assert np.abs(out[fg].astype(int) - expected.astype(int)).max() <= 1


def test_panel_layout_and_caption():
    a, b = _image(5), _image(6, 20, 10)
    out = panel([a, b], ["left", "right"], pad=4, caption_height=14)
    assert out.dtype == np.uint8 and out.shape == (4 + 30 + 14 + 4, 4 + 40 + 4 + 10 + 4, 3)
    assert np.array_equal(out[4:34, 4:44], a)
    assert np.array_equal(out[4:24, 48:58], b)
    assert (out[24:34, 48:58] == 255).all()  # padding under the shorter tile
    caption = out[34:48, 4:44]
    assert caption.min() < 128  # some text pixels drawn
    strip = label_strip("a very long caption that does not fit", 30)
    assert strip.shape == (14, 30, 3) and strip.dtype == np.uint8
    with pytest.raises(ValueError):
        panel([a], ["x", "y"])


def test_save_png_roundtrip(tmp_path):
    img = _image(7)
    p = tmp_path / "sub" / "x.png"
    save_png(p, img)
    assert np.array_equal(np.asarray(Image.open(p)), img)
    assert sorted(os.listdir(p.parent)) == ["x.png"]  # no temporary file left
    with pytest.raises(ValueError, match="x.png"):
        save_png(p, img.astype(np.float32))


# --------------------------------------------------------------------------- plots


def test_plots_return_png():
    m = {"seeds": {"threshold": 0.15, "miou": 0.41, "sweep": [{"threshold": t / 20, "miou": 0.3 + t / 100} for t in range(10)],
                   "best": {"threshold": 0.45, "miou": 0.39}}}
    png = sweep_plot(m)
    assert png.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(png)).size[0] > 100
    with pytest.raises(ValueError):
        sweep_plot({"pseudo": {"miou": 0.5}})
    r = rounds_plot({"rounds": [{"round": 0, "miou": 0.4, "best_miou": 0.45, "m_under": 0.3, "m_over": 0.2},
                                {"round": 1, "miou": 0.5, "best_miou": 0.52, "m_under": 0.2, "m_over": 0.25}]})
    assert r.startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        rounds_plot([])


def test_format_number():
    assert format_number(0.15) == "0.15"
    assert format_number(0.481234) == "0.4812"
    assert format_number(1.0) == "1.0"
    assert format_number(None) == "–"
    assert format_number(354) == "354"


def test_metric_formats_hand_computed():
    assert format_percent(52.5784) == "52.6"  # the issue's example: one decimal
    assert format_percent(100) == "100.0" and format_percent(0.04) == "0.0"
    assert format_percent(None) == "–" and format_percent(float("nan")) == "–"
    assert format_threshold(0.3) == "0.30" and format_threshold(0.15) == "0.15" and format_threshold(0.125) == "0.12"
    assert format_ratio(0.2140) == "0.214" and format_ratio(1.0848) == "1.085" and format_ratio(None) == "–"


# --------------------------------------------------------------------------- HTML report


class FakeLayout:
    """Stand-in for wsss.data.voc.VOCLayout: 3 synthetic 40x30 images (+ one without CAM)."""

    def __init__(self, has_masks: bool = True, split: str = "train", ids: list[str] | None = None):
        self.ids = ids or ["img_a", "img_b", "img_c", "img_nocam"]
        self.class_names = ["background", "cow", "horse", "sh<e>ep&"]
        self.has_masks = has_masks
        self.split = split

    def image(self, image_id: str) -> np.ndarray:
        return _image(self.ids.index(image_id) + (50 if self.split == "val" else 0))

    def mask(self, image_id: str) -> np.ndarray:
        if not self.has_masks:
            raise FileNotFoundError(f"{image_id}.png: no masks")
        m = np.zeros((H, W), np.uint8)
        m[5:20, 5:25] = self.ids.index(image_id) % 3 + 1
        m[0, :] = 255
        return m


def _ramp() -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, W, dtype=np.float32), (H, 1))  # 0 at left, 1 at right


def _write_cams(run: Path) -> dict[str, CamRecord]:
    recs = {
        "img_a": CamRecord(np.array([1]), _ramp()[None], np.zeros((1, 8, 10), np.float32)),
        "img_b": CamRecord(np.array([1, 2]), np.stack([_ramp(), _ramp()[:, ::-1]]), np.zeros((2, 8, 10), np.float32)),
        "img_c": CamRecord(np.array([3]), _ramp()[None] * 0.5, np.zeros((1, 8, 10), np.float32)),
    }
    for i, r in recs.items():
        save_cam(cam_path(run / "cams", i), r)
    return recs


class _Collector(HTMLParser):
    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.urls: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        for k in ("src", "href", "srcset", "data", "action"):
            if k in d:
                self.urls.append(d[k] or "")
        if tag == "img":
            self.imgs.append(d.get("src") or "")
        if tag == "script":
            self.errors.append("script tag")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    assert not c.errors, c.errors
    assert not c.stack, c.stack
    for u in c.urls:
        assert u.startswith("data:image/png;base64,"), u[:60]
    for src in c.imgs:
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG_MAGIC)
        Image.open(io.BytesIO(data)).load()
    return c


PROTOCOL = {
    "method": {"name": "cam"}, "backbone": "efficientnet_lite0", "output_stride": 16, "crop": 320, "epochs": 8,
    "train_split": "train", "limit": None, "threshold_from": "val", "seed": 0, "train_seconds": 907.0,
    "cam_scales": [1.0, 0.5], "note": "<not html>",
}
SWEEP = [{"threshold": t, "miou": m} for t, m in [(0.05, 30.1123), (0.15, 41.2345), (0.25, 45.7711), (0.35, 44.0222)]]


def _seeds(threshold: float = 0.15, source: str = "best of the sweep on val") -> dict:
    return {
        "stage": "seeds", "split": "train", "num_images": 3, "threshold": threshold, "threshold_mode": "fixed",
        "threshold_source": source,
        "miou": 41.2345, "per_class": {"background": 73.1111, "cow": 29.3555, "horse": None, "sh<e>ep&": 20.0},
        "precision": 60.0444, "recall": 55.0555, "m_under": 0.25, "m_over": 0.1254, "fpr": 10.0, "fnr": 20.0,
        "sweep": SWEEP,
        "best": {"threshold": 0.25, "threshold_mode": "swept", "miou": 45.7711,
                 "per_class": {"background": 75.0, "cow": 36.5444, "horse": None, "sh<e>ep&": 25.0},
                 "precision": 62.0, "recall": 58.0, "m_under": 0.2, "m_over": 0.15},
        "protocol": PROTOCOL,
    }


def _val_seeds(threshold: float = 0.05) -> dict:
    # evaluated at the configured default (0.05, here unused): its sweep's best 0.15 became the fixed threshold
    return {
        "stage": "seeds", "split": "val", "num_images": 2, "threshold": threshold, "threshold_mode": "fixed",
        "miou": 33.3777, "per_class": {"background": 61.0, "cow": 5.7555},
        "sweep": [{"threshold": 0.05, "miou": 33.3777}, {"threshold": 0.15, "miou": 39.9444}],
        "best": {"threshold": 0.15, "threshold_mode": "swept", "miou": 39.9444,
                 "per_class": {"background": 70.0, "cow": 9.8888}},
        "protocol": PROTOCOL,
    }


def _pseudo(stage: str = "pseudo", miou: float = 52.3444) -> dict:
    return {
        "stage": stage, "split": "train", "num_images": 3, "threshold": 0.15, "threshold_mode": "fixed",
        "miou": miou, "per_class": {"background": 80.0, "cow": 44.6777, "horse": None, "sh<e>ep&": 30.0},
        "precision": 70.0, "recall": 65.0, "m_under": 0.2, "m_over": 0.1, "coverage": 87.6543, "crf": {"iterations": 10},
        "protocol": PROTOCOL,
    }


def _seg_variant(name: str, miou: float, split: str = "val", scales=(1.0,), flip=False, crf=False) -> dict:
    return {"stage": name, "split": split, "num_images": 2, "threshold": None, "threshold_mode": "fixed",
            "miou": miou, "per_class": {"background": 90.0, "cow": miou - 2.04444},
            "precision": 71.2222, "recall": 80.5555, "m_under": 0.1111, "m_over": 0.2222, "coverage": 100.0,
            "scales": list(scales), "flip": flip, "crf": crf}


def _segmentation() -> dict:
    ms = (0.5, 1.0, 1.5, 2.0)
    return {"split": "val", "variants": {
        "single": _seg_variant("single", 55.1234),
        "multiscale": _seg_variant("multiscale", 56.3456, scales=ms, flip=True),
        "multiscale_crf": _seg_variant("multiscale_crf", 57.0987, scales=ms, flip=True, crf=True),
    }, "protocol": PROTOCOL}


def _visible(text: str) -> str:
    """The page up to the collapsed protocol / raw JSON section."""
    cut = text.find("<h2>Protocol and raw metrics</h2>")
    assert cut > 0
    return text[:cut]


def _full_run(run: Path) -> dict[str, CamRecord]:
    recs = _write_cams(run)
    write_json(run / "metrics" / "seeds.json", _seeds())
    write_json(run / "metrics" / "val_seeds.json", _val_seeds())
    write_json(run / "metrics" / "pseudo.json", _pseudo())
    write_json(run / "metrics" / "rounds.json", {"rounds": [
        {"round": 0, "miou": 40.0, "best_miou": 42.0, "m_under": 0.3, "m_over": 0.1},
        {"round": 1, "miou": 44.5666, "best_miou": 46.0, "m_under": 0.25, "m_over": 0.1234},
    ]})
    pseudo = np.zeros((H, W), np.uint8)
    pseudo[:, 20:] = 1
    pseudo[0, 0] = 255
    save_palette_png(run / "pseudo" / "img_a.png", pseudo)
    (run / "figures").mkdir()
    save_png(run / "figures" / "extra.png", _image(9, 12, 12))
    return recs


def test_build_report_full_run(tmp_path):
    run = tmp_path / "run"
    recs = _full_run(run)
    out = build_report(run, FakeLayout(), title="Run <script>alert(1)</script>")
    assert out == run / "report" / "index.html"
    text = out.read_text(encoding="utf-8")
    c = _parse(out)
    # pictures: per-class bar + sweep + rounds + 1 figure = 4;
    # gallery: img_a image+gt+1 cam+seed+pseudo = 5, img_b image+gt+2 cams+seed = 5, img_c 4
    assert len(c.imgs) == 4 + 5 + 5 + 4
    vis = _visible(text)
    # one decimal for % metrics, two for thresholds, three for m_under / m_over
    for number in ("41.2", "45.8", "52.3", "44.7", "87.7", "44.6", "60.0", "55.1", "0.125", "0.123"):
        assert number in vis, number
    for raw in ("41.2345", "45.7711", "52.3444", "87.6543", "44.5666", "0.1254"):
        assert raw not in vis, raw
    assert re.search(r"\d\.\d{4}", vis) is None  # no 4-decimal number left in the visible part
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "sh&lt;e&gt;ep&amp;" in text and "&lt;not html&gt;" in text
    assert '"cam_scales"' in text.replace("&quot;", '"')

    samples = run / "report" / "samples"
    names = sorted(p.name for p in samples.glob("*.png"))
    assert "img_a_pseudo.png" in names and "img_b_cam_2_horse.png" in names and "img_a_panel.png" in names
    assert "img_b_pseudo.png" not in names and not any(n.startswith("img_nocam") for n in names)
    # the seed tile is the seed at the fixed threshold of seeds.json (0.15), hand-built
    img_a = FakeLayout().image("img_a")
    hand_seed = (_ramp() > 0.15).astype(np.uint8)
    assert np.array_equal(cam_to_seed(recs["img_a"], 0.15), hand_seed)
    got = np.asarray(Image.open(samples / "img_a_seed.png").convert("RGB"))
    assert np.array_equal(got, mask_overlay(img_a, hand_seed))
    assert not np.array_equal(got, mask_overlay(img_a, (_ramp() > 0.25).astype(np.uint8)))


def test_headline_block_comes_first(tmp_path):
    run = tmp_path / "run"
    _full_run(run)
    text = build_report(run, FakeLayout()).read_text(encoding="utf-8")
    head = text.index("<div id=headline>")
    assert head < text.index("<h2>")  # before every section
    order = [text.index(s) for s in ("<div id=headline>", "<h2>Samples</h2>", "<h2>Summary</h2>",
                                     "<h2>Per-class IoU (%)</h2>", "<h2>Background-threshold sweep</h2>",
                                     "<h2>Rounds</h2>", "<h2>Protocol and raw metrics</h2>")]
    assert order == sorted(order)
    block = text[head:text.index("</div>", head)]
    # seed at the fixed threshold, where it came from (val's sweep: 39.9 at 0.15) and the labelled oracle
    assert "41.2" in block and "0.15" in block and "chosen on val" in block and "39.9" in block
    assert "oracle 45.8 at 0.25" in block
    assert "52.3" in block and "Pseudo mask, dense CRF" in block
    assert "random walk" not in block and "Segmentation" not in block  # no such files
    # the protocol in one line: method, backbone, crop, epochs, splits, threshold protocol, seed, train time
    line = block[block.index("<p class=proto>"):]
    assert line.count("</p>") == 1 and "<br" not in line
    for part in ("cam", "efficientnet_lite0", "crop 320", "8 epochs", "train on train / evaluate on train",
                 "best of the sweep on val", "seed 0", "train time 15.1 min"):
        assert part in line, part


def test_protocol_and_raw_json_collapsed_at_the_end(tmp_path):
    run = tmp_path / "run"
    _full_run(run)
    text = build_report(run, FakeLayout()).read_text(encoding="utf-8").replace("&quot;", '"')
    start = text.index("<details id=protocol>")
    end = text.index("</details>", start)
    assert '"cam_scales"' in text[start:end] and '"train_seconds": 907.0' in text[start:end]
    assert text.index('"cam_scales"') > start  # never dumped before the collapsed block
    assert "<pre>" not in text[:start]
    raw = text.index("<details id=raw>")
    assert raw > start and '"miou": 41.2345' in text[raw:]
    assert "<h2>" not in text[raw:]  # nothing after it


def test_val_sweep_only_no_fixed_row(tmp_path):
    run = tmp_path / "run"
    _full_run(run)
    vis = _visible(build_report(run, FakeLayout(), num_samples=0).read_text(encoding="utf-8"))
    summary = vis[vis.index("<h2>Summary</h2>"):vis.index("<h2>Per-class")]
    row = summary[summary.index("val_seeds.json"):]
    row = row[:row.index("</tr>")]
    assert "sweep only" in row and "seeds.json" in row and "39.9" in row and "0.15" in row
    assert "0.05" not in row and "33.4" not in row  # its unused default threshold and the mIoU there
    per_class = vis[vis.index("<h2>Per-class"):vis.index("<h2>Background")]
    assert "val_seeds @" not in per_class and "val_seeds sweep best @ 0.15" in per_class
    assert ">5.8<" not in per_class and ">9.9<" in per_class  # cow on val at 0.05 (unused) vs at 0.15
    assert "33.4" not in vis

    # when a stage did use val's threshold (config threshold = val's), its fixed row is real
    write_json(run / "metrics" / "seeds.json", _seeds(threshold=0.05, source="config"))
    vis = _visible(build_report(run, FakeLayout(), num_samples=0).read_text(encoding="utf-8"))
    summary = vis[vis.index("<h2>Summary</h2>"):vis.index("<h2>Per-class")]
    row = summary[summary.index("val_seeds.json"):]
    row = row[:row.index("</tr>")]
    assert "sweep only" not in row and "33.4" in row and "0.05" in row


def test_pseudo_rw_column_and_headline_only_when_present(tmp_path):
    run = tmp_path / "run"
    _full_run(run)
    text = build_report(run, FakeLayout()).read_text(encoding="utf-8")
    assert "random walk" not in text and not list((run / "report" / "samples").glob("*pseudo_rw*"))

    rw = np.zeros((H, W), np.uint8)
    rw[10:, :] = 2
    save_palette_png(run / "pseudo_rw" / "img_b.png", rw)
    write_json(run / "metrics" / "pseudo_rw.json", _pseudo("pseudo_rw", 61.2555))
    out = build_report(run, FakeLayout())
    text = out.read_text(encoding="utf-8")
    c = _parse(out)
    assert len(c.imgs) == 4 + 5 + 6 + 4  # img_b gains the random-walk tile
    assert "pseudo mask (random walk)" in "".join(c.text)
    got = np.asarray(Image.open(run / "report" / "samples" / "img_b_pseudo_rw.png").convert("RGB"))
    assert np.array_equal(got, mask_overlay(FakeLayout().image("img_b"), rw))
    head = text[text.index("<div id=headline>"):text.index("<h2>")]
    assert "Pseudo mask, random walk" in head and "61.3" in head and "61.2555" not in _visible(text)
    assert "pseudo_rw.json" in _visible(text)


def test_segmentation_section_only_when_present(tmp_path):
    run = tmp_path / "run"
    _full_run(run)
    val = FakeLayout(split="val", ids=["v1", "v2", "v3"])
    text = build_report(run, FakeLayout(), val_layout=val).read_text(encoding="utf-8")
    assert "Segmentation network" not in text and not (run / "report" / "samples" / "segmentation_val").exists()

    write_json(run / "metrics" / "segmentation.json", {**_segmentation(), "pred_variant": "multiscale_crf"})
    write_json(run / "metrics" / "train_segmentation.json",
               {"split": "train", "variants": {"single": _seg_variant("single", 62.4555, split="train")}})
    preds = {}
    for k, i in enumerate(("v1", "v3")):
        p = np.zeros((H, W), np.uint8)
        p[:, : 10 * (k + 1)] = k + 1
        save_palette_png(run / "segmentation" / "pred" / "val" / f"{i}.png", p)
        preds[i] = p
    out = build_report(run, FakeLayout(), val_layout=val, num_seg_samples=5)
    text = out.read_text(encoding="utf-8")
    c = _parse(out)
    # + 2 val ids x (image, ground truth, prediction)
    assert len(c.imgs) == 4 + 5 + 5 + 4 + 2 * 3
    vis = _visible(text)
    sec = vis[vis.index("<h2>Segmentation network</h2>"):vis.index("<h2>Summary</h2>")]
    for label, value in (("single-scale", "55.1"), ("multi-scale + flip", "56.3"), ("multi-scale + flip + CRF", "57.1"),
                         ("single-scale", "62.5")):
        assert label in sec and value in sec, (label, value)
    assert "55.1234" not in vis and "0.111" in sec and "prediction (multi-scale + flip + CRF)" in sec
    assert vis.index("<h2>Samples</h2>") < vis.index("<h2>Segmentation network</h2>")
    head = text[text.index("<div id=headline>"):text.index("<h2>")]
    assert "Segmentation network, val" in head and "57.1" in head and "Segmentation network, train" in head
    seg_dir = run / "report" / "samples" / "segmentation_val"
    got = np.asarray(Image.open(seg_dir / "v3_pred.png").convert("RGB"))
    assert np.array_equal(got, mask_overlay(val.image("v3"), preds["v3"]))
    assert not (seg_dir / "v2_pred.png").exists()

    # without any val layout (not a VOCLayout): the predictions alone, in palette colours
    out = build_report(run, FakeLayout(), num_samples=0, num_seg_samples=2)
    c = _parse(out)
    assert len(c.imgs) == 4 + 2
    got = np.asarray(Image.open(seg_dir / "v1_pred.png").convert("RGB"))
    assert np.array_equal(got, voc_palette()[preds["v1"]])


def test_segmentation_overlays_real_msrc_val_from_the_train_layout(tmp_path, msrc_root):
    from wsss.data.voc import VOCLayout
    from wsss.io import read_index_png

    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    train = VOCLayout(msrc_root, "train", limit=2, check_files=False)
    write_json(run / "metrics" / "segmentation.json", _segmentation())
    val_id = (msrc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    gt = read_index_png(msrc_root / "SegmentationClass" / f"{val_id}.png")
    pred = np.where(gt == 255, 0, gt).astype(np.uint8)
    save_palette_png(run / "segmentation" / "pred" / "val" / f"{val_id}.png", pred)
    out = build_report(run, train)  # no val_layout: made from the train layout's root
    c = _parse(out)
    assert len(c.imgs) == 3
    image = np.asarray(Image.open(msrc_root / "JPEGImages" / f"{val_id}.jpg").convert("RGB"))
    got = np.asarray(Image.open(run / "report" / "samples" / "segmentation_val" / f"{val_id}_pred.png").convert("RGB"))
    assert np.array_equal(got, mask_overlay(image, pred))
    assert (pred != 0).any() and not np.array_equal(got, image)


def test_build_report_threshold_override_and_num_samples(tmp_path):
    run = tmp_path / "run"
    _write_cams(run)
    out = build_report(run, FakeLayout(has_masks=False), num_samples=1, threshold=0.6)
    c = _parse(out)
    assert len(c.imgs) == 3  # img_a: image + 1 cam + seed (no masks, no metrics)
    got = np.asarray(Image.open(run / "report" / "samples" / "img_a_seed.png").convert("RGB"))
    assert np.array_equal(got, mask_overlay(FakeLayout().image("img_a"), (_ramp() > 0.6).astype(np.uint8)))
    with pytest.raises(ValueError):
        build_report(run, FakeLayout(), threshold=2.0)


def test_build_report_cams_only_and_broken_metrics(tmp_path):
    run = tmp_path / "run"
    _write_cams(run)
    out = build_report(run, FakeLayout())
    c = _parse(out)
    # no seeds.json -> no threshold -> no seed tile: image + gt + K cams
    assert len(c.imgs) == 3 + 4 + 3
    assert "img_a" in "".join(c.text)
    assert "No metrics yet" in out.read_text(encoding="utf-8")

    (run / "metrics").mkdir()
    (run / "metrics" / "seeds.json").write_text("{not json", encoding="utf-8")
    write_json(run / "metrics" / "pseudo.json", {"stage": "pseudo", "miou": 33.3333})
    out = build_report(run, FakeLayout(), num_samples=0)
    c = _parse(out)
    text = out.read_text(encoding="utf-8")
    assert "33.3" in text and "seeds.json" in text and "skipped" in text.lower()
    assert len(c.imgs) == 0


def test_build_report_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        build_report(tmp_path / "nope", FakeLayout())


def test_gallery_ids_spread_over_the_split():
    from wsss.report.html import gallery_ids

    ids = [f"{c}_{n}" for c in range(1, 5) for n in range(6)]  # 4 classes x 6, grouped by class
    assert gallery_ids(ids, 4) == ["1_0", "2_2", "3_3", "4_5"]  # indices 0, 8, 15, 23
    assert len({i.split("_")[0] for i in gallery_ids(ids, 4)}) == 4
    assert gallery_ids(ids, 1) == ["1_0"] and gallery_ids(ids, 0) == [] and gallery_ids([], 3) == []
    assert gallery_ids(ids[:3], 8) == ids[:3]
    assert gallery_ids(ids, 2) == ["1_0", "4_5"]

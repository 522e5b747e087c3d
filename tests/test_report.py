"""Tests for wsss.report: overlays, plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import io
import os
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


# --------------------------------------------------------------------------- HTML report


class FakeLayout:
    """Stand-in for wsss.data.voc.VOCLayout: 3 synthetic 40x30 images."""

    def __init__(self, has_masks: bool = True):
        self.ids = ["img_a", "img_b", "img_c", "img_nocam"]
        self.class_names = ["background", "cow", "horse", "sh<e>ep&"]
        self.has_masks = has_masks

    def image(self, image_id: str) -> np.ndarray:
        return _image(self.ids.index(image_id))

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


def test_build_report_full_run(tmp_path):
    run = tmp_path / "run"
    recs = _write_cams(run)
    sweep = [{"threshold": t, "miou": m} for t, m in [(0.05, 0.3011), (0.15, 0.4123), (0.25, 0.4577), (0.35, 0.4402)]]
    write_json(run / "metrics" / "seeds.json", {
        "stage": "seeds", "split": "train", "num_images": 3, "threshold": 0.15, "threshold_mode": "fixed",
        "miou": 0.4123, "per_class": {"background": 0.7311, "cow": 0.2935, "horse": None, "sh<e>ep&": 0.2},
        "precision": 0.6, "recall": 0.55, "m_under": 0.25, "m_over": 0.125, "fpr": 0.1, "fnr": 0.2,
        "sweep": sweep,
        "best": {"threshold": 0.25, "threshold_mode": "swept", "miou": 0.4577,
                 "per_class": {"background": 0.75, "cow": 0.3654, "horse": None, "sh<e>ep&": 0.25},
                 "precision": 0.62, "recall": 0.58, "m_under": 0.2, "m_over": 0.15},
        "protocol": {"dataset": "synthetic", "cam_scales": [1.0, 0.5], "note": "<not html>"},
    })
    write_json(run / "metrics" / "pseudo.json", {
        "stage": "pseudo", "split": "train", "num_images": 3, "threshold": 0.3, "threshold_mode": "fixed",
        "miou": 0.5234, "per_class": {"background": 0.8, "cow": 0.4468, "horse": None, "sh<e>ep&": 0.3},
        "precision": 0.7, "recall": 0.65, "m_under": 0.2, "m_over": 0.1, "coverage": 0.8765, "crf": False,
    })
    write_json(run / "metrics" / "rounds.json", {"rounds": [
        {"round": 0, "miou": 0.4, "best_miou": 0.42, "m_under": 0.3, "m_over": 0.1},
        {"round": 1, "miou": 0.4456, "best_miou": 0.46, "m_under": 0.25, "m_over": 0.12},
    ]})
    pseudo = np.zeros((H, W), np.uint8)
    pseudo[:, 20:] = 1
    pseudo[0, 0] = 255
    save_palette_png(run / "pseudo" / "img_a.png", pseudo)
    (run / "figures").mkdir()
    save_png(run / "figures" / "extra.png", _image(9, 12, 12))

    out = build_report(run, FakeLayout(), title="Run <script>alert(1)</script>")
    assert out == run / "report" / "index.html"
    text = out.read_text(encoding="utf-8")
    c = _parse(out)
    # pictures: per-class bar + sweep + rounds + 1 figure = 4;
    # gallery: img_a image+gt+1 cam+seed+pseudo = 5, img_b image+gt+2 cams+seed = 5, img_c 4
    assert len(c.imgs) == 4 + 5 + 5 + 4
    for number in ("0.4123", "0.4577", "0.5234", "0.4468", "0.8765", "0.4456"):
        assert number in text, number
    assert "fixed" in text and "swept" in text
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

    (run / "metrics").mkdir()
    (run / "metrics" / "seeds.json").write_text("{not json", encoding="utf-8")
    write_json(run / "metrics" / "val_seeds.json", {"stage": "val_seeds", "miou": 0.3333})
    out = build_report(run, FakeLayout(), num_samples=0)
    c = _parse(out)
    text = out.read_text(encoding="utf-8")
    assert "0.3333" in text and "seeds.json" in text and "skipped" in text.lower()
    assert len(c.imgs) == 0


def test_build_report_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        build_report(tmp_path / "nope", FakeLayout())

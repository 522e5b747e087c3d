"""Self-contained HTML report of a run directory: ``<run>/report/index.html``.

The report reads whatever the stages of a run have written and leaves out what is
missing, so it can be built after any stage (even with only ``cams/``):

- ``<run>/metrics/*.json``: summary table (one row per stage file: fixed background
  threshold and its mIoU, the sweep's best threshold and its mIoU, precision, recall,
  m_under, m_over, coverage), per-class IoU table, mIoU-vs-threshold sweep plot, a
  per-round plot for files holding ``"rounds"`` (multi-round methods such as GSLM) and
  the raw JSON of every file;
- ``<run>/figures/*.png``: embedded as they are;
- a sample gallery for the first ``num_samples`` dataset ids that have a CAM file
  (``<run>/cams/<id>.npz``): image, ground-truth overlay, one CAM overlay per class, the
  seed (:func:`wsss.evaluation.seeds.cam_to_seed`), the pseudo mask
  (``<run>/pseudo/<id>.png``) and confident labels (``<run>/confident/<id>.png``). The
  same pictures are written at full resolution under ``<run>/report/samples/``.

Every picture is inlined as a base64 PNG ``data:`` URI and the CSS is inline, so the
single HTML file can be mailed or archived; no JavaScript is used. All text is
HTML-escaped. Files are written atomically through :mod:`wsss.io`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wsss.evaluation.seeds import cam_to_seed
from wsss.inference.store import cam_path, load_cam
from wsss.io import atomic_write, read_index_png, read_json
from wsss.report.overlay import as_rgb, cam_overlay, mask_overlay, panel, png_data_uri, resize_rgb, save_png
from wsss.report.plots import _num, has_sweep, per_class_bar, rounds_plot, sweep_plot

__all__ = ["build_report", "load_metrics", "format_number"]

_STAGE_ORDER = ("seeds", "val_seeds", "pseudo", "confident")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafafa}
pre{background:#f6f6f6;padding:0.6em;font-size:0.8em;overflow-x:auto}
.note{color:#555;font-size:0.85em}.warn{color:#a33;font-size:0.85em}
.row{display:flex;flex-wrap:wrap;gap:6px;margin:0.6em 0 1.2em 0;align-items:flex-start}
figure{margin:0;text-align:center}figcaption{font-size:0.75em;color:#333;max-width:320px;word-wrap:break-word}
img{image-rendering:auto;border:1px solid #ddd}
.plots img{max-width:100%}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def format_number(v: Any, digits: int = 4) -> str:
    """Format a metric value for the report.

    None/NaN -> ``"–"``; ints unchanged; floats with ``digits`` decimals and trailing
    zeros stripped (``0.15`` not ``0.1500``; ``0.48123`` -> ``0.4812``); anything else ``str``.
    """
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        s = f"{f:.{digits}f}"
        if "." in s:
            s = s.rstrip("0")
            if s.endswith("."):
                s += "0"
        return s
    return str(v)


def load_metrics(metrics_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """Read every ``*.json`` in ``metrics_dir``.

    Returns:
        (metrics, notes): ``metrics`` maps file stem -> parsed JSON, ordered seeds,
        val_seeds, pseudo, confident, then the rest alphabetically; ``notes`` lists one
        line per file that could not be read (those are left out). A missing folder gives
        ``({}, [])``.
    """
    d = Path(metrics_dir)
    if not d.is_dir():
        return {}, []
    files = sorted(d.glob("*.json"))
    rank = {s: i for i, s in enumerate(_STAGE_ORDER)}
    files.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    out: dict[str, Any] = {}
    notes: list[str] = []
    for p in files:
        if p.name.startswith("."):
            continue
        try:
            out[p.stem] = read_json(p)
        except (ValueError, OSError) as exc:
            notes.append(f"{p}: skipped ({exc})")
    return out, notes


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def _img_tag(data_uri: str, alt: str, width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    return f'<img src="{data_uri}" alt="{_e(alt)}"{w}>'


def _figure(data_uri: str, caption: str, width: int | None = None) -> str:
    return f"<figure>{_img_tag(data_uri, caption, width)}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], left_cols: int = 1) -> str:
    """HTML table; cells are already-escaped strings."""
    th = "".join(f'<th{" class=l" if i < left_cols else ""}>{h}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td{" class=l" if i < left_cols else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --------------------------------------------------------------------------- sections


_SUMMARY_KEYS = ("miou", "best", "threshold", "precision", "recall", "m_under", "m_over", "coverage")


def _summary_section(metrics: Mapping[str, Any]) -> str:
    rows = []
    for name, m in metrics.items():
        if not isinstance(m, Mapping) or not any(k in m for k in _SUMMARY_KEYS):
            continue
        best = m.get("best") if isinstance(m.get("best"), Mapping) else {}
        mode = m.get("threshold_mode", "fixed")
        thr = m.get("threshold")
        fixed_thr = f"{_e(format_number(thr))} ({_e(mode)})" if thr is not None else "–"
        if best:
            best_thr = f"{_e(format_number(best.get('threshold')))} ({_e(best.get('threshold_mode', 'swept'))})"
        else:
            best_thr = "–"
        rows.append([
            _e(f"{name}.json"),
            _e(m.get("stage", name)),
            _e(format_number(m.get("split"))),
            _e(format_number(m.get("num_images"))),
            fixed_thr,
            f"<b>{_e(format_number(m.get('miou')))}</b>",
            best_thr,
            _e(format_number(best.get("miou"))) if best else "–",
            _e(format_number(m.get("precision"))),
            _e(format_number(m.get("recall"))),
            _e(format_number(m.get("m_under"))),
            _e(format_number(m.get("m_over"))),
            _e(format_number(m.get("coverage"))),
        ])
    if not rows:
        return "<h2>Summary</h2><p class=note>No stage metrics in metrics/ yet.</p>"
    headers = [
        "file", "stage", "split", "images",
        "fixed threshold", "mIoU @ fixed",
        "swept-best threshold", "mIoU @ swept best",
        "precision", "recall", "m_under", "m_over", "coverage",
    ]
    note = (
        "<p class=note><b>fixed</b>: the background threshold the stage used, as set in "
        "the configuration (the reportable number). <b>swept</b>: the best threshold of a "
        "sweep over thresholds on the same split, picked with the ground truth (an "
        "optimistic upper bound). precision, recall, m_under, m_over and coverage are at "
        "the fixed threshold.</p>"
    )
    return "<h2>Summary</h2>" + note + _table(headers, rows, left_cols=3)


def _class_order(metrics: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    order = [str(c) for c in class_names]
    for m in metrics.values():
        if not isinstance(m, Mapping):
            continue
        tables = [m.get("per_class")]
        if isinstance(m.get("best"), Mapping):
            tables.append(m["best"].get("per_class"))
        for t in tables:
            if isinstance(t, Mapping):
                for c in t:
                    if str(c) not in order:
                        order.append(str(c))
    return order


def _per_class_section(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    cols: list[tuple[str, Mapping[str, Any], Any]] = []
    for name, m in metrics.items():
        if not isinstance(m, Mapping):
            continue
        if isinstance(m.get("per_class"), Mapping):
            cols.append((f"{name} (fixed)", m["per_class"], m.get("miou")))
        best = m.get("best")
        if isinstance(best, Mapping) and isinstance(best.get("per_class"), Mapping):
            cols.append((f"{name} (swept best)", best["per_class"], best.get("miou")))
    if not cols:
        return ""
    order = [c for c in _class_order(metrics, class_names) if any(c in t for _, t, _ in cols)]
    rows = []
    for c in order:
        rows.append([_e(c)] + [_e(format_number(t.get(c))) if c in t else "" for _, t, _ in cols])
    rows.append(["<b>mIoU</b>"] + [f"<b>{_e(format_number(v))}</b>" for _, _, v in cols])
    out = ["<h2>Per-class IoU</h2>",
           "<p class=note>– = no IoU (null in the metrics file, e.g. a class absent from the split); "
           "empty = the file has no entry for that class.</p>",
           _table(["class"] + [_e(h) for h, _, _ in cols], rows)]
    try:
        png = per_class_bar({k: v for k, v in metrics.items() if isinstance(v, Mapping)}, class_names)
        out.append('<div class=plots>' + _figure(png_data_uri(png), "per-class IoU at the fixed threshold") + "</div>")
    except ValueError:
        pass
    return "".join(out)


def _sweep_section(metrics: Mapping[str, Any]) -> str:
    curves = {k: v for k, v in metrics.items() if has_sweep(v)}
    if not curves:
        return ""
    png = sweep_plot(curves)
    cap = "mIoU vs background threshold: circle = fixed threshold, star = swept best (" + ", ".join(curves) + ")"
    return "<h2>Background-threshold sweep</h2><div class=plots>" + _figure(png_data_uri(png), cap) + "</div>"


def _rounds_section(metrics: Mapping[str, Any]) -> str:
    out = []
    for name, m in metrics.items():
        rounds = m.get("rounds") if isinstance(m, Mapping) else (m if isinstance(m, list) and name == "rounds" else None)
        if not isinstance(rounds, list) or not rounds or not all(isinstance(r, Mapping) for r in rounds):
            continue
        keys: list[str] = []
        for r in rounds:
            for k, v in r.items():
                if k not in keys and not isinstance(v, (Mapping, list)):
                    keys.append(k)
        rows = [[_e(format_number(r.get(k))) for k in keys] for r in rounds]
        out.append(f"<h3>{_e(name)}.json</h3>")
        try:
            out.append("<div class=plots>" + _figure(png_data_uri(rounds_plot(rounds)), f"per-round scores ({name}.json)") + "</div>")
        except ValueError:
            pass
        out.append(_table([_e(k) for k in keys], rows))
    if not out:
        return ""
    return "<h2>Rounds</h2>" + "".join(out)


def _raw_section(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return ""
    parts = ["<h2>All metrics files</h2>"]
    for name, m in metrics.items():
        text = json.dumps(m, indent=2, ensure_ascii=False, default=str)
        parts.append(f"<details><summary>{_e(name)}.json</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts)


def _figures_section(run: Path, notes: list[str]) -> str:
    fig_dir = run / "figures"
    if not fig_dir.is_dir():
        return ""
    figs = []
    for p in sorted(fig_dir.glob("*.png")):
        try:
            data = p.read_bytes()
        except OSError as exc:
            notes.append(f"{p}: unreadable ({exc})")
            continue
        if not data.startswith(_PNG_MAGIC):
            notes.append(f"{p}: not a PNG file, left out")
            continue
        figs.append(_figure(png_data_uri(data), p.name))
    if not figs:
        return ""
    return "<h2>Figures</h2><div class='row plots'>" + "".join(figs) + "</div>"


def _fit(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = max(h, w)
    if max_side <= 0 or s <= max_side:
        return img
    scale = max_side / s
    return resize_rgb(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def _gallery_section(
    run: Path,
    layout: Any,
    class_names: Sequence[str],
    num_samples: int,
    threshold: float | None,
    threshold_src: str,
    max_tile_side: int,
    notes: list[str],
) -> str:
    cam_dir = run / "cams"
    if layout is None or num_samples <= 0:
        return ""
    if not cam_dir.is_dir():
        return "<h2>Samples</h2><p class=note>No cams/ folder yet.</p>"
    ids = []
    for i in layout.ids:
        if cam_path(cam_dir, i).is_file():
            ids.append(i)
            if len(ids) >= num_samples:
                break
    if not ids:
        return "<h2>Samples</h2><p class=note>No CAM file matches an id of the dataset.</p>"
    sample_dir = run / "report" / "samples"
    has_masks = bool(getattr(layout, "has_masks", False))
    rows = []
    for image_id in ids:
        try:
            rec = load_cam(cam_path(cam_dir, image_id))
        except (ValueError, OSError) as exc:
            notes.append(str(exc))
            continue
        image = as_rgb(layout.image(image_id))
        tiles: list[tuple[str, str, np.ndarray]] = [("image", str(image_id), image)]
        if has_masks:
            try:
                tiles.append(("gt", "ground truth", mask_overlay(image, layout.mask(image_id))))
            except Exception as exc:  # noqa: BLE001 - a missing GT mask must not stop the report
                notes.append(f"{image_id}: no ground-truth overlay ({exc})")
        for k, cam in zip(rec.keys, rec.high_res):
            k = int(k)
            name = str(class_names[k]) if 0 <= k < len(class_names) else f"class {k}"
            tiles.append((f"cam_{k}_{_slug(name)}", name, cam_overlay(image, cam)))
        if threshold is not None:
            seed = cam_to_seed(rec, threshold)
            tiles.append(("seed", f"seed t={format_number(threshold)} ({threshold_src})", mask_overlay(image, seed)))
        for sub, caption in (("pseudo", "pseudo mask"), ("confident", "confident (void = uncertain)")):
            p = run / sub / f"{image_id}.png"
            if p.is_file():
                try:
                    tiles.append((sub, caption, mask_overlay(image, read_index_png(p))))
                except ValueError as exc:
                    notes.append(str(exc))
        stem = _slug(str(image_id))
        for slug, _, arr in tiles:
            save_png(sample_dir / f"{stem}_{slug}.png", arr)
        save_png(sample_dir / f"{stem}_panel.png", panel([t[2] for t in tiles], [t[1] for t in tiles]))
        figs = "".join(_figure(png_data_uri(_fit(arr, max_tile_side)), cap) for _, cap, arr in tiles)
        rows.append(f"<div class=row>{figs}</div>")
    seed_note = (
        f"seed = argmax over CAMs with a constant background channel at t={format_number(threshold)} "
        f"({_e(threshold_src)})." if threshold is not None
        else "no seed shown: seeds.json has no threshold and none was given."
    )
    head = (
        f"<h2>Samples</h2><p class=note>First {len(rows)} dataset ids with a CAM file. "
        f"CAM overlays use the jet colour map (red = high). {seed_note} Full-size PNGs: report/samples/.</p>"
    )
    return head + "".join(rows)


# --------------------------------------------------------------------------- entry point


def build_report(
    run_dir: str | os.PathLike,
    layout: Any,
    *,
    num_samples: int = 8,
    title: str | None = None,
    threshold: float | None = None,
    max_tile_side: int = 320,
) -> Path:
    """Write the self-contained HTML report of a run to ``<run>/report/index.html``.

    Args:
        run_dir: the run directory (``cams/``, ``metrics/``, ``pseudo/``, ``confident/``,
            ``figures/``; any of them may be missing).
        layout: the dataset (``wsss.data.voc.VOCLayout`` or anything with ``ids``,
            ``class_names`` (index 0 = background), ``image(id) -> uint8 (H, W, 3)``,
            ``mask(id) -> uint8 (H, W)`` and ``has_masks``); None skips the gallery.
        num_samples: gallery size: the first ``num_samples`` ids of ``layout.ids`` that
            have a CAM file.
        title: page title (default ``"wsss run: <run folder name>"``).
        threshold: background threshold in [0, 1] for the seed overlays; default the
            fixed ``threshold`` of ``metrics/seeds.json`` (no seed overlay if neither).
        max_tile_side: gallery pictures embedded in the HTML are downscaled so their
            longer side is at most this many pixels (0 = never); the PNGs under
            ``<run>/report/samples/`` keep full resolution.

    Returns:
        Path of ``index.html``.

    Raises:
        FileNotFoundError: if ``run_dir`` is not a directory.
        ValueError: if ``threshold`` is not a number in [0, 1].
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run directory not found")
    if threshold is not None:
        t = _num(threshold)
        if t is None or not 0.0 <= t <= 1.0:
            raise ValueError(f"{run}: threshold must be a number in [0, 1], got {threshold!r}")
        threshold, threshold_src = t, "given"
    else:
        threshold_src = "fixed, from seeds.json"

    metrics, notes = load_metrics(run / "metrics")
    seeds = metrics.get("seeds") if isinstance(metrics.get("seeds"), Mapping) else {}
    if threshold is None:
        threshold = _num(seeds.get("threshold"))
        if threshold is not None and seeds.get("threshold_mode", "fixed") != "fixed":
            threshold_src = f"{seeds.get('threshold_mode')}, from seeds.json"

    class_names = [str(c) for c in getattr(layout, "class_names", [])] if layout is not None else []
    title = title or f"wsss run: {run.resolve().name}"

    protocol = seeds.get("protocol")
    protocol_src = "seeds.json"
    if protocol is None:
        for name, m in metrics.items():
            if isinstance(m, Mapping) and m.get("protocol") is not None:
                protocol, protocol_src = m["protocol"], f"{name}.json"
                break

    body: list[str] = [f"<h1>{_e(title)}</h1>"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body.append(f"<p class=note>Run directory: {_e(run.resolve())} &middot; report built {_e(stamp)}</p>")
    body.append("<h2>Protocol</h2>")
    if protocol is not None:
        text = json.dumps(protocol, indent=2, ensure_ascii=False, default=str)
        body.append(f"<p class=note>from {_e(protocol_src)}</p><pre>{_e(text)}</pre>")
    else:
        body.append("<p class=note>No protocol recorded (metrics/seeds.json missing).</p>")
    body.append(_summary_section(metrics))
    body.append(_per_class_section(metrics, class_names))
    body.append(_sweep_section(metrics))
    body.append(_rounds_section(metrics))
    body.append(_figures_section(run, notes))
    body.append(
        _gallery_section(run, layout, class_names, int(num_samples), threshold, threshold_src, max_tile_side, notes)
    )
    body.append(_raw_section(metrics))
    if notes:
        body.insert(2, "<div class=warn><b>Skipped:</b><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")

    page = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body></html>\n"
    )
    out = run / "report" / "index.html"
    with atomic_write(out, "w") as fh:
        fh.write(page)
    return out

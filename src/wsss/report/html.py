"""Self-contained HTML report of a run directory: ``<run>/report/index.html``.

The report reads whatever the stages of a run have written and leaves out what is
missing, so it can be built after any stage (even with only ``cams/``). It reads top
to bottom like a short report:

1. **Headline**: seed mIoU at the fixed background threshold (with where the threshold
   came from, e.g. "chosen on val at 0.30", and the swept oracle beside it), the CRF
   pseudo-mask mIoU (``metrics/pseudo.json``), the random-walk pseudo-mask mIoU
   (``metrics/pseudo_rw.json``), the segmentation network's val mIoU per test-time
   variant (``metrics/segmentation.json["variants"]``: ``single``, ``multiscale``,
   ``multiscale_crf``), all with one decimal, and the protocol in one line (method,
   backbone, crop, epochs, train / eval split, threshold protocol, seed, train time).
2. **Samples** (gallery) for ``num_samples`` dataset ids with a CAM file, spread evenly over
   the split's id list (:func:`gallery_ids`: VOC-layout lists are often grouped by class)
   (``<run>/cams/<id>.npz``): image, ground truth, one CAM overlay per class, the seed
   (:func:`wsss.evaluation.seeds.cam_to_seed`), the CRF pseudo mask
   (``<run>/pseudo/<id>.png``), the random-walk pseudo mask (``<run>/pseudo_rw/<id>.png``),
   the confident labels (``<run>/confident/<id>.png``) and the segmentation network's
   prediction (``<run>/segmentation/pred/<split>/<id>.png``), each when present; full-size
   PNGs under ``<run>/report/samples/``.
3. **Segmentation** (when ``metrics/segmentation.json`` or ``metrics/train_segmentation.json``
   exists): metrics table per variant and split, per-class IoU, and prediction overlays
   ``<run>/segmentation/pred/<split>/<id>.png`` over that split's images (captioned with the
   variant named by ``segmentation.json["pred_variant"]`` when the file records it).
4. **Tables**: summary (one row per metrics file), per-class IoU, mIoU-vs-threshold sweep,
   per-round scores (files holding ``"rounds"``, e.g. GSLM), then ``<run>/figures/*.png``.
5. Collapsed ``<details>`` at the end: the full protocol and the raw JSON of every file.

Number formats: every % metric (mIoU, IoU, precision, recall, coverage; wsss stores them
in %, 0..100) with one decimal; background thresholds with two decimals; m_under / m_over
(ratios) with three.

Threshold-choosing files: ``<split>_<stage>.json`` (e.g. ``val_seeds.json``, written when
``evaluation.threshold_from: val``) holds a sweep on ``<split>`` whose best threshold
becomes the fixed threshold of ``<stage>.json``; its own ``threshold`` / ``miou`` (the
configured default, which no stage used) are not shown, only the sweep's best.

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
from wsss.io import atomic_write, read_index_png, read_json, voc_palette
from wsss.report.overlay import as_rgb, cam_overlay, mask_overlay, panel, png_data_uri, resize_rgb, save_png
from wsss.report.plots import _num, has_sweep, per_class_bar, rounds_plot, sweep_plot

__all__ = ["build_report", "gallery_ids", "load_metrics", "format_number", "format_percent", "format_threshold", "format_ratio"]

_STAGE_ORDER = (
    "seeds", "val_seeds", "pseudo", "confident", "pseudo_rw", "val_pseudo_rw", "pseudo_rw_crf", "val_pseudo_rw_crf",
    "segmentation", "train_segmentation",
)
_SEG_FILES = ("segmentation", "train_segmentation")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DASH = "–"

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:0.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1.0em;margin:1em 0 0.3em 0}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafafa}
pre{background:#f6f6f6;padding:0.6em;font-size:0.8em;overflow-x:auto}
.note{color:#555;font-size:0.85em}.warn{color:#a33;font-size:0.85em}
.row{display:flex;flex-wrap:wrap;gap:6px;margin:0.6em 0 1.2em 0;align-items:flex-start}
figure{margin:0;text-align:center}figcaption{font-size:0.75em;color:#333;max-width:320px;word-wrap:break-word}
img{image-rendering:auto;border:1px solid #ddd}
.plots img{max-width:100%}.plots figcaption{max-width:none}
.row.gal{flex-wrap:nowrap}.row.gal figure{flex:0 1 auto;min-width:0}.row.gal img{max-width:100%;height:auto}
#headline{background:#f4f7fb;border:1px solid #cfd8e3;border-radius:6px;padding:0.6em 1em;margin:0.8em 0}
#headline table{font-size:0.95em;margin:0}
#headline td,#headline th{border:none;padding:3px 10px 3px 0;text-align:left;vertical-align:baseline;background:none}
#headline td.v{font-size:1.35em;font-weight:bold;text-align:right;white-space:nowrap;padding-right:14px}
#headline td.d{color:#444;font-size:0.9em}
#headline .proto{font-size:0.85em;color:#333;margin:0.5em 0 0 0}
.legend{font-size:0.8em;color:#333;margin:0.3em 0}
.sw{display:inline-block;width:0.9em;height:0.9em;border:1px solid #888;vertical-align:middle;margin:0 0.25em 0 0.8em}
details{margin:0.3em 0}summary{cursor:pointer}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


# --------------------------------------------------------------------------- number formats


def format_number(v: Any, digits: int = 4) -> str:
    """Format a value for the report without a unit convention.

    None/NaN -> ``"–"``; ints unchanged; floats with ``digits`` decimals and trailing
    zeros stripped (``0.15`` not ``0.1500``; ``0.48123`` -> ``0.4812``); anything else ``str``.
    For metrics use :func:`format_percent`, :func:`format_threshold`, :func:`format_ratio`.
    """
    if v is None:
        return _DASH
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return _DASH
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        s = f"{f:.{digits}f}"
        if "." in s:
            s = s.rstrip("0")
            if s.endswith("."):
                s += "0"
        return s
    return str(v)


def _fixed(v: Any, digits: int) -> str:
    f = _num(v)
    if f is None:
        return _DASH if v is None or isinstance(v, (int, float, np.number)) else str(v)
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return f"{f:.{digits}f}"


def format_percent(v: Any) -> str:
    """A % metric (mIoU, IoU, precision, recall, coverage; stored in %, 0..100) with one
    decimal: ``52.5784 -> "52.6"``, ``100 -> "100.0"``; None/NaN -> ``"–"``."""
    return _fixed(v, 1)


def format_threshold(v: Any) -> str:
    """A background threshold in [0, 1] with two decimals: ``0.3 -> "0.30"``; None -> ``"–"``."""
    return _fixed(v, 2)


def format_ratio(v: Any) -> str:
    """m_under / m_over (ratios of pixel counts, not %) with three decimals:
    ``0.2140 -> "0.214"``; None -> ``"–"``."""
    return _fixed(v, 3)


_PERCENT_WORDS = ("miou", "iou", "precision", "recall", "coverage", "fpr", "fnr", "accuracy")


def _fmt_key(key: str, v: Any) -> str:
    """Format ``v`` by what its metrics key means (see the module docstring)."""
    k = str(key).lower()
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or v is None:
        return format_number(v)
    if "threshold" in k:
        return format_threshold(v)
    if "m_under" in k or "m_over" in k:
        return format_ratio(v)
    if any(w in k for w in _PERCENT_WORDS):
        return format_percent(v)
    if "seconds" in k:
        return _fixed(v, 1)
    return format_number(v)


def _duration(seconds: Any) -> str:
    s = _num(seconds)
    if s is None:
        return _DASH
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.1f} min"
    return f"{int(s // 3600)} h {int(round((s % 3600) / 60)):02d} min"


# --------------------------------------------------------------------------- reading


def load_metrics(metrics_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """Read every ``*.json`` in ``metrics_dir``.

    Returns:
        (metrics, notes): ``metrics`` maps file stem -> parsed JSON, ordered seeds,
        val_seeds, pseudo, confident, pseudo_rw, val_pseudo_rw, segmentation,
        train_segmentation, then the rest alphabetically; ``notes`` lists one line per file
        that could not be read (those are left out). A missing folder gives ``({}, [])``.
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


def _m(metrics: Mapping[str, Any], name: str) -> dict:
    v = metrics.get(name)
    return v if isinstance(v, Mapping) else {}


def _best(m: Mapping[str, Any]) -> dict:
    b = m.get("best")
    return b if isinstance(b, Mapping) else {}


def _chosen_split(m: Mapping[str, Any]) -> str | None:
    """``"val"`` for ``threshold_source: "best of the sweep on val"``, else None."""
    src = m.get("threshold_source")
    if isinstance(src, str):
        hit = re.search(r"sweep on (\S+)", src)
        if hit:
            return hit.group(1).strip(".,;)")
    return None


def _chooser_base(name: str, m: Any, metrics: Mapping[str, Any]) -> str | None:
    """If ``name`` is a threshold-choosing file (``<split>_<base>.json`` holding a sweep on
    ``<split>`` whose own fixed threshold no stage used), return ``base``, else None.

    The fixed threshold counts as used when ``<base>.json`` exists with that same threshold.
    """
    if not isinstance(m, Mapping) or not (has_sweep(m) or _best(m)):
        return None
    split = m.get("split")
    if not isinstance(split, str) or not name.startswith(split + "_"):
        return None
    base = name[len(split) + 1:]
    if not base or base == name:
        return None
    used = _m(metrics, base)
    if used:
        t_used, t_own = _num(used.get("threshold")), _num(m.get("threshold"))
        if t_used is not None and t_own is not None and abs(t_used - t_own) < 1e-9:
            return None
    return base


def _choosers(metrics: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, m in metrics.items():
        base = _chooser_base(name, m, metrics)
        if base is not None:
            out[name] = base
    return out


def _chooser_for(metrics: Mapping[str, Any], base: str) -> tuple[str, dict] | None:
    """The file that chose ``base``'s fixed threshold (e.g. ``val_seeds`` for ``seeds``)."""
    split = _chosen_split(_m(metrics, base))
    if split is not None:
        m = _m(metrics, f"{split}_{base}")
        if m:
            return f"{split}_{base}", m
    for name, b in _choosers(metrics).items():
        if b == base:
            return name, _m(metrics, name)
    return None


def _protocol(metrics: Mapping[str, Any]) -> tuple[Any, str]:
    seeds = _m(metrics, "seeds")
    if seeds.get("protocol") is not None:
        return seeds["protocol"], "seeds.json"
    for name, m in metrics.items():
        if isinstance(m, Mapping) and m.get("protocol") is not None:
            return m["protocol"], f"{name}.json"
    return None, ""


# --------------------------------------------------------------------------- html bits


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def _img_tag(data_uri: str, alt: str, width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    return f'<img src="{data_uri}" alt="{_e(alt)}"{w}>'


def _figure(data_uri: str, caption: str, width: int | None = None) -> str:
    return f"<figure>{_img_tag(data_uri, caption, width)}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], left_cols: int = 1, cls: str = "") -> str:
    """HTML table; cells are already-escaped strings."""
    th = "".join(f'<th{" class=l" if i < left_cols else ""}>{h}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td{" class=l" if i < left_cols else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>")
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --------------------------------------------------------------------------- headline


_VARIANT_LABELS = {
    "single": "single-scale",
    "multiscale": "multi-scale + flip",
    "multiscale_crf": "multi-scale + flip + CRF",
}


def _variant_label(name: str, m: Mapping[str, Any]) -> str:
    if name in _VARIANT_LABELS:
        return _VARIANT_LABELS[name]
    scales = m.get("scales")
    parts = []
    if isinstance(scales, list) and scales:
        parts.append("single-scale" if len(scales) == 1 else "multi-scale")
    if m.get("flip") is True:
        parts.append("flip")
    if m.get("crf") is True:
        parts.append("CRF")
    return " + ".join(parts) if parts else str(name)


def _variants(m: Mapping[str, Any]) -> dict[str, dict]:
    """``name -> metrics`` of a segmentation file: its ``variants``, or the file itself when flat."""
    v = m.get("variants")
    if isinstance(v, Mapping):
        return {str(k): dict(x) for k, x in v.items() if isinstance(x, Mapping)}
    if "miou" in m:
        return {str(m.get("stage") or "segmentation"): dict(m)}
    return {}


def _seg_split(m: Mapping[str, Any], default: str) -> str:
    if isinstance(m.get("split"), str):
        return m["split"]
    for v in _variants(m).values():
        if isinstance(v.get("split"), str):
            return v["split"]
    return default


def _seg_source(m: Mapping[str, Any]) -> str | None:
    """What the segmentation network was trained on, if the file says (``source``)."""
    for d in (m, m.get("params"), m.get("segmentation"), (m.get("protocol") or {}).get("segmentation")
              if isinstance(m.get("protocol"), Mapping) else None):
        if isinstance(d, Mapping) and isinstance(d.get("source"), str):
            return {"pseudo": "CRF pseudo masks", "pseudo_rw": "random-walk pseudo masks",
                    "pseudo_rw_crf": "random-walk pseudo masks + CRF",
                    "gt": "true masks (fully supervised)"}.get(d["source"], d["source"])
    return None


def _split_note(m: Mapping[str, Any]) -> str:
    split, n = m.get("split"), m.get("num_images")
    if split is None and n is None:
        return ""
    s = _e(split) if split is not None else "?"
    return f"{s}, {_e(format_number(n))} images" if n is not None else s


def _threshold_phrase(name: str, m: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """"background threshold 0.30, chosen on val (val sweep best 46.4)" and the swept oracle."""
    parts = []
    t = m.get("threshold")
    if t is not None:
        split = _chosen_split(m)
        src = m.get("threshold_source")
        if split is not None:
            txt = f"background threshold <b>{_e(format_threshold(t))}</b>, chosen on {_e(split)}"
            ch = _chooser_for(metrics, name)
            if ch is not None and _best(ch[1]).get("miou") is not None:
                txt += f" ({_e(split)} mIoU at it: {_e(format_percent(_best(ch[1])['miou']))})"
            parts.append(txt)
        elif src:
            parts.append(f"background threshold <b>{_e(format_threshold(t))}</b> ({_e(src)})")
        else:
            parts.append(f"background threshold <b>{_e(format_threshold(t))}</b>")
    best = _best(m)
    if best.get("miou") is not None:
        parts.append(
            f"oracle {_e(format_percent(best['miou']))} at {_e(format_threshold(best.get('threshold')))} "
            f"(swept on {_e(m.get('split', 'the same split'))} with its ground truth; optimistic)"
        )
    return " &middot; ".join(parts)


def _protocol_line(metrics: Mapping[str, Any]) -> str:
    proto, _ = _protocol(metrics)
    if not isinstance(proto, Mapping):
        return ""
    seeds = _m(metrics, "seeds")
    method = proto.get("method")
    if isinstance(method, Mapping):
        method = method.get("name")
    parts = []
    if method:
        parts.append(f"method <b>{_e(method)}</b>")
    if proto.get("backbone"):
        bb = str(proto["backbone"])
        if proto.get("output_stride"):
            bb += f" (OS {proto['output_stride']})"
        parts.append(f"backbone {_e(bb)}")
    if proto.get("crop") is not None:
        parts.append(f"crop {_e(proto['crop'])}")
    if proto.get("epochs") is not None:
        parts.append(f"{_e(proto['epochs'])} epoch{'' if proto['epochs'] == 1 else 's'}")
    train_split = proto.get("train_split")
    eval_split = seeds.get("split") if seeds else None
    if train_split or eval_split:
        parts.append(f"train on {_e(train_split or '?')} / evaluate on {_e(eval_split or '?')}")
    if proto.get("limit") is not None:
        parts.append(f"limit {_e(proto['limit'])} images per split")
    src = seeds.get("threshold_source")
    if src:
        parts.append(f"background threshold: {_e(src)}")
    elif proto.get("threshold_from"):
        parts.append(f"background threshold: best of the sweep on {_e(proto['threshold_from'])}")
    if proto.get("seed") is not None:
        parts.append(f"seed {_e(proto['seed'])}")
    if proto.get("train_seconds") is not None:
        parts.append(f"train time {_e(_duration(proto['train_seconds']))}")
    if not parts:
        return ""
    return "<p class=proto><b>Protocol:</b> " + " &middot; ".join(parts) + " (full protocol at the end)</p>"


def _headline_section(metrics: Mapping[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []  # (label, value html, detail html)
    seeds = _m(metrics, "seeds")
    if seeds.get("miou") is not None:
        detail = _split_note(seeds)
        phrase = _threshold_phrase("seeds", seeds, metrics)
        rows.append(("Seed (CAM + background threshold)", format_percent(seeds["miou"]),
                     " &middot; ".join(x for x in (detail, phrase) if x)))
    pseudo = _m(metrics, "pseudo")
    if pseudo.get("miou") is not None:
        bits = [_split_note(pseudo)]
        if pseudo.get("threshold") is not None:
            bits.append(f"from the seed at {_e(format_threshold(pseudo['threshold']))}")
        if pseudo.get("coverage") is not None:
            bits.append(f"coverage {_e(format_percent(pseudo['coverage']))}%")
        conf = _m(metrics, "confident")
        if conf.get("miou") is not None:
            bits.append(f"confident labels {_e(format_percent(conf['miou']))} on "
                        f"{_e(format_percent(conf.get('coverage')))}% of pixels")
        rows.append(("Pseudo mask, dense CRF", format_percent(pseudo["miou"]), " &middot; ".join(b for b in bits if b)))
    rw = _m(metrics, "pseudo_rw")
    if rw.get("miou") is not None:
        bits = [_split_note(rw), _threshold_phrase("pseudo_rw", rw, metrics)]
        if rw.get("coverage") is not None and not _num(rw.get("coverage")) == 100.0:
            bits.append(f"coverage {_e(format_percent(rw['coverage']))}%")
        rows.append(("Pseudo mask, random walk", format_percent(rw["miou"]), " &middot; ".join(b for b in bits if b)))
    rwc = _m(metrics, "pseudo_rw_crf")
    if rwc.get("miou") is not None:
        bits = [_split_note(rwc), f"the walk's masks at its background threshold {_e(format_threshold(rwc.get('threshold')))}, then dense CRF"]
        rows.append(("Pseudo mask, random walk + CRF", format_percent(rwc["miou"]), " &middot; ".join(b for b in bits if b)))
    for fname in _SEG_FILES:
        seg = _m(metrics, fname)
        variants = _variants(seg)
        if not variants:
            continue
        split = _seg_split(seg, "val" if fname == "segmentation" else "train")
        vals = [(name, v) for name, v in variants.items() if v.get("miou") is not None]
        if not vals:
            continue
        last_name, last = vals[-1]
        others = " &middot; ".join(
            (f"<b>{_e(_variant_label(n, v))} {_e(format_percent(v['miou']))}</b>" if n == last_name
             else f"{_e(_variant_label(n, v))} {_e(format_percent(v['miou']))}")
            for n, v in vals
        )
        n_img = next((v.get("num_images") for _, v in vals if v.get("num_images") is not None), None)
        src = _seg_source(seg)
        detail = f"{_e(split)}" + (f", {_e(format_number(n_img))} images" if n_img is not None else "")
        detail += f" &middot; {others}"
        if src:
            detail += f" &middot; trained on {_e(src)}"
        rows.append((f"Segmentation network, {split}", format_percent(last["miou"]), detail))
    proto = _protocol_line(metrics)
    if not rows and not proto:
        return "<div id=headline><p class=note>No metrics yet (metrics/ is empty or missing).</p></div>"
    body = "".join(
        f"<tr><th>{_e(label)}</th><td class=v>{_e(value)}</td><td class=d>{detail}</td></tr>"
        for label, value, detail in rows
    )
    table = f"<table><thead><tr><th></th><th>mIoU (%)</th><th></th></tr></thead><tbody>{body}</tbody></table>" if rows else ""
    return f"<div id=headline>{table}{proto}</div>"


# --------------------------------------------------------------------------- tables


_SUMMARY_KEYS = ("miou", "best", "threshold", "precision", "recall", "m_under", "m_over", "coverage")


def _threshold_cell(name: str, m: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    t = m.get("threshold")
    if t is None:
        if m.get("fg_threshold") is not None or m.get("bg_threshold") is not None:
            return (f"fg &ge; {_e(format_threshold(m.get('fg_threshold')))}, "
                    f"bg &lt; {_e(format_threshold(m.get('bg_threshold')))}")
        return _DASH
    how = m.get("threshold_source")
    if not how:
        seeds_t = _num(_m(metrics, "seeds").get("threshold"))
        if name != "seeds" and seeds_t is not None and abs(seeds_t - float(t)) < 1e-9 and not has_sweep(m):
            how = "the seeds' threshold"
        else:
            how = m.get("threshold_mode", "fixed")
    return f"{_e(format_threshold(t))} <span class=note>({_e(how)})</span>"


def _summary_section(metrics: Mapping[str, Any]) -> str:
    choosers = _choosers(metrics)
    rows = []
    for name, m in metrics.items():
        if name in _SEG_FILES or not isinstance(m, Mapping) or not any(k in m for k in _SUMMARY_KEYS):
            continue
        best = _best(m)
        if best:
            best_thr = _e(format_threshold(best.get("threshold")))
            best_miou = _e(format_percent(best.get("miou")))
        else:
            best_thr = best_miou = _DASH
        if name in choosers:
            base = choosers[name]
            rows.append([
                _e(f"{name}.json"), _e(format_number(m.get("split"))), _e(format_number(m.get("num_images"))),
                f"<span class=note>sweep only: its best chose the fixed threshold of {_e(base)}.json</span>",
                "", f"<b>{best_thr}</b>", f"<b>{best_miou}</b>", "", "", "", "", "",
            ])
            continue
        rows.append([
            _e(f"{name}.json"),
            _e(format_number(m.get("split"))),
            _e(format_number(m.get("num_images"))),
            _threshold_cell(name, m, metrics),
            f"<b>{_e(format_percent(m.get('miou')))}</b>",
            best_thr,
            best_miou,
            _e(format_percent(m.get("precision"))),
            _e(format_percent(m.get("recall"))),
            _e(format_ratio(m.get("m_under"))),
            _e(format_ratio(m.get("m_over"))),
            _e(format_percent(m.get("coverage"))),
        ])
    if not rows:
        return "<h2>Summary</h2><p class=note>No stage metrics in metrics/ yet.</p>"
    headers = [
        "file", "split", "images", "background threshold (how chosen)", "mIoU",
        "swept best threshold", "mIoU @ swept best", "precision", "recall", "m_under", "m_over", "coverage",
    ]
    note = (
        "<p class=note>mIoU, precision, recall and coverage in %. <b>background threshold</b>: the "
        "threshold the stage used (the reportable number). <b>swept best</b>: the best threshold of "
        "a sweep on the same split, picked with its ground truth (an optimistic oracle), except on "
        "a sweep-only row, where that sweep chose the fixed threshold. precision, recall, m_under "
        "(missed / true foreground), m_over (false / true foreground) and coverage (labelled share "
        "of the pixels) are at the threshold the stage used.</p>"
    )
    return "<h2>Summary</h2>" + note + _table(headers, rows, left_cols=2)


def _class_order(tables: Iterable[Mapping[str, Any]], class_names: Sequence[str]) -> list[str]:
    order = [str(c) for c in class_names]
    for t in tables:
        for c in t:
            if str(c) not in order:
                order.append(str(c))
    return order


def _per_class_columns(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], Any]]:
    choosers = _choosers(metrics)
    cols: list[tuple[str, Mapping[str, Any], Any]] = []
    for name, m in metrics.items():
        if name in _SEG_FILES or not isinstance(m, Mapping):
            continue
        if name not in choosers and isinstance(m.get("per_class"), Mapping):
            t = m.get("threshold")
            label = f"{name} @ {format_threshold(t)}" if t is not None else name
            cols.append((label, m["per_class"], m.get("miou")))
        best = _best(m)
        if isinstance(best.get("per_class"), Mapping):
            kind = "sweep best" if name in choosers else "oracle"
            cols.append((f"{name} {kind} @ {format_threshold(best.get('threshold'))}", best["per_class"], best.get("miou")))
    return cols


def _per_class_table(cols: Sequence[tuple[str, Mapping[str, Any], Any]], class_names: Sequence[str]) -> tuple[str, list[str]]:
    """(table html, classes left out because no column has an IoU for them)."""
    order = [c for c in _class_order([t for _, t, _ in cols], class_names) if any(c in t for _, t, _ in cols)]
    shown = [c for c in order if any(_num(t.get(c)) is not None for _, t, _ in cols)]
    absent = [c for c in order if c not in shown]
    rows = []
    for c in shown:
        rows.append([_e(c)] + [_e(format_percent(t.get(c))) if c in t else "" for _, t, _ in cols])
    rows.append(["<b>mIoU</b>"] + [f"<b>{_e(format_percent(v))}</b>" for _, _, v in cols])
    return _table(["class"] + [_e(h) for h, _, _ in cols], rows), absent


def _per_class_section(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    cols = _per_class_columns(metrics)
    if not cols:
        return ""
    table, absent = _per_class_table(cols, class_names)
    out = ["<h2>Per-class IoU (%)</h2>",
           "<p class=note>One column per metrics file at the threshold it used (@ t), and at its "
           "sweep's best threshold (oracle, or the sweep that chose the threshold). – = no IoU "
           "(the class is absent from that split); empty = the file has no entry for the class.",
           (f" Absent from every split shown: {_e(', '.join(absent))}." if absent else ""),
           "</p>", table]
    bars = {h: {"per_class": t} for h, t, _ in cols if "oracle" not in h}
    try:
        png = per_class_bar(bars, class_names)
        out.append("<details><summary>per-class IoU chart</summary><div class=plots>"
                   + _figure(png_data_uri(png), "per-class IoU at the threshold each stage used") + "</div></details>")
    except ValueError:
        pass
    return "".join(out)


def _sweep_section(metrics: Mapping[str, Any]) -> str:
    choosers = _choosers(metrics)
    curves: dict[str, Mapping[str, Any]] = {}
    for k, v in metrics.items():
        if not has_sweep(v):
            continue
        if k in choosers:  # its fixed threshold was never used: no circle for it
            curves[f"{k} (chose the threshold)"] = {**v, "threshold": None, "miou": None}
        else:
            curves[k] = v
    if not curves:
        return ""
    png = sweep_plot(curves)
    cap = ("mIoU (%) vs background threshold: circle = the threshold a stage used, star = the sweep's best ("
           + ", ".join(curves) + ")")
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
        rows = [[_e(_fmt_key(k, r.get(k))) for k in keys] for r in rounds]
        out.append(f"<h3>{_e(name)}.json</h3>")
        try:
            out.append("<div class=plots>" + _figure(png_data_uri(rounds_plot(rounds)), f"per-round scores ({name}.json)") + "</div>")
        except ValueError:
            pass
        out.append(_table([_e(k) for k in keys], rows))
    if not out:
        return ""
    return "<h2>Rounds</h2><p class=note>mIoU, precision, recall, coverage in %.</p>" + "".join(out)


def _details_section(metrics: Mapping[str, Any]) -> str:
    proto, src = _protocol(metrics)
    parts = []
    if proto is not None:
        text = json.dumps(proto, indent=2, ensure_ascii=False, default=str)
        parts.append(f"<details id=protocol><summary>Full protocol (from {_e(src)})</summary><pre>{_e(text)}</pre></details>")
    if metrics:
        inner = []
        for name, m in metrics.items():
            text = json.dumps(m, indent=2, ensure_ascii=False, default=str)
            inner.append(f"<details><summary>{_e(name)}.json</summary><pre>{_e(text)}</pre></details>")
        parts.append("<details id=raw><summary>Raw metrics files (JSON)</summary>" + "".join(inner) + "</details>")
    if not parts:
        return ""
    return "<h2>Protocol and raw metrics</h2>" + "".join(parts)


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


# --------------------------------------------------------------------------- pictures


def _fit(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = max(h, w)
    if max_side <= 0 or s <= max_side:
        return img
    scale = max_side / s
    return resize_rgb(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def _legend(labels: set[int], class_names: Sequence[str]) -> str:
    """Colour swatches (VOC palette) of the labels drawn in the pictures."""
    pal = voc_palette()
    items = []
    for k in sorted(labels):
        if k == 0:
            continue
        name = "void / ignored" if k == 255 else (str(class_names[k]) if 0 <= k < len(class_names) else f"class {k}")
        r, g, b = (int(x) for x in pal[k])
        items.append(f"<span class=sw style='background:#{r:02x}{g:02x}{b:02x}'></span>{_e(name)}")
    if not items:
        return ""
    return "<div class=legend>Colours (background not coloured):" + "".join(items) + "</div>"


def _seg_pred_dir(run: Path, split: str) -> Path:
    return run / "segmentation" / "pred" / str(split)


def gallery_ids(ids: Sequence[str], k: int) -> list[str]:
    """``k`` ids evenly spaced over ``ids`` (first and last included, order kept): the gallery
    then shows several classes of a split whose ids are grouped by class (MSRC's first eight
    are all flowers). All of ``ids`` when ``k >= len(ids)``; ``[]`` for ``k <= 0``."""
    ids = list(ids)
    if k <= 0 or not ids:
        return []
    if k >= len(ids):
        return ids
    if k == 1:
        return [ids[0]]
    return [ids[round(j * (len(ids) - 1) / (k - 1))] for j in range(k)]


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
    ids = gallery_ids([i for i in layout.ids if cam_path(cam_dir, i).is_file()], num_samples)
    if not ids:
        return "<h2>Samples</h2><p class=note>No CAM file matches an id of the dataset.</p>"
    sample_dir = run / "report" / "samples"
    has_masks = bool(getattr(layout, "has_masks", False))
    split = getattr(layout, "split", None)
    label_dirs = [
        ("pseudo", run / "pseudo", "pseudo mask (CRF)"),
        ("pseudo_rw", run / "pseudo_rw", "pseudo mask (random walk)"),
        ("pseudo_rw_crf", run / "pseudo_rw_crf", "pseudo mask (random walk + CRF)"),
        ("confident", run / "confident", "confident (void = uncertain)"),
    ]
    if split is not None:
        label_dirs.append(("segmentation", _seg_pred_dir(run, split), "segmentation network"))
    rows = []
    labels: set[int] = set()
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
                gt = np.asarray(layout.mask(image_id))
                tiles.append(("gt", "ground truth", mask_overlay(image, gt)))
                labels.update(int(x) for x in np.unique(gt))
            except Exception as exc:  # noqa: BLE001 - a missing GT mask must not stop the report
                notes.append(f"{image_id}: no ground-truth overlay ({exc})")
        for k, cam in zip(rec.keys, rec.high_res):
            k = int(k)
            name = str(class_names[k]) if 0 <= k < len(class_names) else f"class {k}"
            tiles.append((f"cam_{k}_{_slug(name)}", f"CAM: {name}", cam_overlay(image, cam)))
        if threshold is not None:
            seed = cam_to_seed(rec, threshold)
            tiles.append(("seed", f"seed, t={format_threshold(threshold)}", mask_overlay(image, seed)))
            labels.update(int(x) for x in np.unique(seed))
        for sub, folder, caption in label_dirs:
            p = folder / f"{image_id}.png"
            if p.is_file():
                try:
                    lab = read_index_png(p)
                    tiles.append((sub, caption, mask_overlay(image, lab)))
                    labels.update(int(x) for x in np.unique(lab))
                except ValueError as exc:
                    notes.append(str(exc))
        stem = _slug(str(image_id))
        for slug, _, arr in tiles:
            save_png(sample_dir / f"{stem}_{slug}.png", arr)
        save_png(sample_dir / f"{stem}_panel.png", panel([t[2] for t in tiles], [t[1] for t in tiles]))
        figs = "".join(_figure(png_data_uri(_fit(arr, max_tile_side)), cap) for _, cap, arr in tiles)
        rows.append(f"<div class='row gal'>{figs}</div>")
    seed_note = (
        f"Seed = argmax over the CAMs with a constant background score t={_e(format_threshold(threshold))} "
        f"({_e(threshold_src)})." if threshold is not None
        else "No seed shown: seeds.json has no threshold and none was given."
    )
    head = (
        f"<h2>Samples</h2><p class=note>First {len(rows)} {_e(split or 'dataset')} images with a CAM file. "
        f"CAM overlays use the jet colour map (red = high). {seed_note} Full-size PNGs: report/samples/.</p>"
    )
    return head + _legend(labels, class_names) + "".join(rows)


def _layout_for_split(layout: Any, split: str, given: Any, notes: list[str]) -> Any:
    """The dataset split ``split``: ``given``, or ``layout`` if it is that split, or a
    :class:`wsss.data.voc.VOCLayout` of ``split`` on ``layout``'s root (None if impossible)."""
    if given is not None:
        return given
    if layout is None:
        return None
    if getattr(layout, "split", None) == split:
        return layout
    from wsss.data.voc import VOCLayout

    if not isinstance(layout, VOCLayout):
        return None
    try:
        return VOCLayout(layout.root, split, mask_dir=getattr(layout, "mask_dir", "auto"), check_files=False)
    except Exception as exc:  # noqa: BLE001 - the report shows predictions alone instead
        notes.append(f"{layout.root}: no {split} split for the segmentation overlays ({exc})")
        return None


def _seg_table(metrics: Mapping[str, Any]) -> tuple[str, list[tuple[str, Mapping[str, Any], Any]]]:
    rows = []
    cols = []
    for fname in _SEG_FILES + tuple(k for k in metrics if k.endswith("_segmentation") and k not in _SEG_FILES):
        seg = _m(metrics, fname)
        for name, v in _variants(seg).items():
            split = v.get("split") or _seg_split(seg, "?")
            scales = v.get("scales")
            sc = ", ".join(format_number(s) for s in scales) if isinstance(scales, list) else _DASH
            label = _variant_label(name, v)
            rows.append([
                _e(label), _e(split), _e(format_number(v.get("num_images"))), _e(sc),
                _e("yes" if v.get("flip") else "no") if "flip" in v else _DASH,
                _e("yes" if v.get("crf") else "no") if "crf" in v else _DASH,
                f"<b>{_e(format_percent(v.get('miou')))}</b>",
                _e(format_percent(v.get("precision"))), _e(format_percent(v.get("recall"))),
                _e(format_ratio(v.get("m_under"))), _e(format_ratio(v.get("m_over"))),
            ])
            if isinstance(v.get("per_class"), Mapping):
                cols.append((f"{label} ({split})", v["per_class"], v.get("miou")))
    if not rows:
        return "", cols
    headers = ["variant", "split", "images", "scales", "flip", "CRF", "mIoU", "precision", "recall", "m_under", "m_over"]
    return _table(headers, rows, left_cols=2), cols


def _segmentation_section(
    run: Path,
    metrics: Mapping[str, Any],
    layout: Any,
    val_layout: Any,
    class_names: Sequence[str],
    num_samples: int,
    max_tile_side: int,
    notes: list[str],
) -> str:
    seg = _m(metrics, "segmentation")
    split = _seg_split(seg, "val") if seg else "val"
    pred_dir = _seg_pred_dir(run, split)
    table, cols = _seg_table(metrics)
    has_preds = pred_dir.is_dir() and any(pred_dir.glob("*.png"))
    if not table and not has_preds:
        return ""
    out = ["<h2>Segmentation network</h2>"]
    src = _seg_source(seg) if seg else None
    out.append(
        "<p class=note>DeepLabV3+ trained on the run's pseudo masks"
        + (f" ({_e(src)})" if src else "")
        + f" and scored on {_e(split)} against the true masks (mIoU, precision, recall in %); "
        "metrics/train_segmentation.json, when present, scores it on train, beside the pseudo masks.</p>"
    )
    if table:
        out.append(table)
    if cols:
        ptable, absent = _per_class_table(cols, class_names)
        extra = f" Absent: {_e(', '.join(absent))}." if absent else ""
        out.append(f"<details><summary>per-class IoU (%)</summary><p class=note>– = class absent from the split.{extra}</p>"
                   f"{ptable}</details>")
    if has_preds and num_samples > 0:
        vl = _layout_for_split(layout, split, val_layout, notes)
        if vl is not None:
            ids = [i for i in vl.ids if (pred_dir / f"{i}.png").is_file()][:num_samples]
        else:
            ids = sorted(p.stem for p in pred_dir.glob("*.png"))[:num_samples]
        sample_dir = run / "report" / "samples" / f"segmentation_{_slug(split)}"
        rows = []
        labels: set[int] = set()
        per_row = 2  # two images (image, ground truth, prediction each) per row
        pv = seg.get("pred_variant") if seg else None  # which variant wrote segmentation/pred/, if recorded
        pv_m = _variants(seg).get(pv, {}) if isinstance(pv, str) else {}
        pred_caption = f"prediction ({_variant_label(pv, pv_m)})" if isinstance(pv, str) else "prediction"
        for image_id in ids:
            try:
                pred = read_index_png(pred_dir / f"{image_id}.png")
            except ValueError as exc:
                notes.append(str(exc))
                continue
            labels.update(int(x) for x in np.unique(pred))
            tiles: list[tuple[str, str, np.ndarray]] = []
            if vl is not None:
                try:
                    image = as_rgb(vl.image(image_id))
                except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop the report
                    notes.append(f"{image_id}: no {split} image ({exc})")
                    image = None
            else:
                image = None
            if image is not None:
                tiles.append(("image", str(image_id), image))
                if getattr(vl, "has_masks", False):
                    try:
                        gt = np.asarray(vl.mask(image_id))
                        tiles.append(("gt", "ground truth", mask_overlay(image, gt)))
                        labels.update(int(x) for x in np.unique(gt))
                    except Exception as exc:  # noqa: BLE001
                        notes.append(f"{image_id}: no ground-truth overlay ({exc})")
                tiles.append(("pred", pred_caption, mask_overlay(image, pred)))
            else:
                tiles.append(("pred", f"{image_id}: prediction", voc_palette()[pred]))
            stem = _slug(str(image_id))
            for slug, _, arr in tiles:
                save_png(sample_dir / f"{stem}_{slug}.png", arr)
            rows.append("".join(_figure(png_data_uri(_fit(arr, max_tile_side)), cap) for _, cap, arr in tiles))
        if rows:
            no_img = "" if vl is not None else " (no dataset layout for this split: predictions shown alone)"
            out.append(f"<h3>Predictions on {_e(split)}</h3><p class=note>First {len(rows)} {_e(split)} images "
                       f"with a prediction in segmentation/pred/{_e(split)}/{_e(no_img)}.</p>")
            out.append(_legend(labels, class_names))
            spacer = "<div style='width:18px'></div>"
            for i in range(0, len(rows), per_row):
                out.append("<div class='row gal'>" + spacer.join(rows[i:i + per_row]) + "</div>")
    return "".join(out)


# --------------------------------------------------------------------------- entry point


def build_report(
    run_dir: str | os.PathLike,
    layout: Any,
    *,
    num_samples: int = 8,
    title: str | None = None,
    threshold: float | None = None,
    max_tile_side: int = 320,
    val_layout: Any = None,
    num_seg_samples: int | None = None,
) -> Path:
    """Write the self-contained HTML report of a run to ``<run>/report/index.html``.

    Layout of the page: headline numbers (one decimal) + protocol line, sample gallery,
    segmentation section, tables and plots, figures, then the full protocol and the raw
    JSON in collapsed ``<details>`` (see the module docstring).

    Args:
        run_dir: the run directory (``cams/``, ``metrics/``, ``pseudo/``, ``pseudo_rw/``,
            ``confident/``, ``segmentation/pred/<split>/``, ``figures/``; any may be missing).
        layout: the dataset split of the gallery (``wsss.data.voc.VOCLayout`` or anything
            with ``ids``, ``class_names`` (index 0 = background), ``image(id) -> uint8 (H, W,
            3)``, ``mask(id) -> uint8 (H, W)``, ``has_masks`` and ``split``); None skips the
            gallery.
        num_samples: gallery size: ``num_samples`` ids of ``layout.ids`` that have a CAM file,
            evenly spaced over them (:func:`gallery_ids`).
        title: page title (default ``"wsss run: <run folder name>"``).
        threshold: background threshold in [0, 1] for the seed overlays; default the
            fixed ``threshold`` of ``metrics/seeds.json`` (no seed overlay if neither).
        max_tile_side: pictures embedded in the HTML are downscaled so their longer side
            is at most this many pixels (0 = never); the PNGs under
            ``<run>/report/samples/`` keep full resolution.
        val_layout: the split the segmentation network was scored on (``split`` of
            ``metrics/segmentation.json``, normally val), for its prediction overlays. Default:
            ``layout`` if it is that split, else a ``VOCLayout`` of that split on
            ``layout.root`` (when ``layout`` is a ``VOCLayout``), else predictions are shown
            without their images.
        num_seg_samples: number of segmentation prediction overlays (default ``num_samples``).

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
    seeds = _m(metrics, "seeds")
    if threshold is None:
        threshold = _num(seeds.get("threshold"))
        if threshold is not None:
            if seeds.get("threshold_mode", "fixed") != "fixed":
                threshold_src = f"{seeds.get('threshold_mode')}, from seeds.json"
            elif seeds.get("threshold_source"):
                threshold_src = f"the fixed threshold of seeds.json: {seeds['threshold_source']}"

    class_names = [str(c) for c in getattr(layout, "class_names", [])] if layout is not None else []
    if not class_names and val_layout is not None:
        class_names = [str(c) for c in getattr(val_layout, "class_names", [])]
    title = title or f"wsss run: {run.resolve().name}"
    n_seg = int(num_samples if num_seg_samples is None else num_seg_samples)

    body: list[str] = [f"<h1>{_e(title)}</h1>"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body.append(f"<p class=note>Run directory: {_e(run.resolve())} &middot; report built {_e(stamp)}</p>")
    body.append(_headline_section(metrics))
    body.append(
        _gallery_section(run, layout, class_names, int(num_samples), threshold, threshold_src, max_tile_side, notes)
    )
    body.append(_segmentation_section(run, metrics, layout, val_layout, class_names, n_seg, max_tile_side, notes))
    body.append(_summary_section(metrics))
    body.append(_per_class_section(metrics, class_names))
    body.append(_sweep_section(metrics))
    body.append(_rounds_section(metrics))
    body.append(_figures_section(run, notes))
    body.append(_details_section(metrics))
    if notes:
        body.insert(3, "<div class=warn><b>Skipped:</b><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")

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

"""Metric plots for reports, rendered with matplotlib's Agg canvas to PNG bytes.

The plots use :class:`matplotlib.figure.Figure` with a ``FigureCanvasAgg`` directly, so
they neither touch nor depend on the global pyplot backend and are safe to call from
any thread or a headless machine.

Inputs are the metrics dictionaries written by the evaluation stages (see
``wsss.report.html``): mIoU and the other scores are plotted in the units they are
stored in: wsss stores mIoU, IoU, precision and recall in % (0..100), m_under / m_over
as ratios; labels print % values with one decimal and thresholds with two.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["sweep_plot", "rounds_plot", "per_class_bar", "has_sweep"]

_DPI = 100


def _to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None  # drop NaN


def _sweep_points(m: Mapping[str, Any]) -> list[tuple[float, float]]:
    pts = []
    for p in m.get("sweep") or []:
        if isinstance(p, Mapping):
            t, v = _num(p.get("threshold")), _num(p.get("miou"))
            if t is not None and v is not None:
                pts.append((t, v))
    return sorted(pts)


def has_sweep(m: Any) -> bool:
    """True if the metrics dict ``m`` holds a non-empty ``sweep`` of (threshold, miou) points."""
    return isinstance(m, Mapping) and bool(_sweep_points(m))


def sweep_plot(metrics: Mapping[str, Mapping[str, Any]]) -> bytes:
    """mIoU against background threshold for every metrics file that has a sweep.

    For each entry with a ``sweep`` list (``[{"threshold", "miou"}, ...]``) draws the
    curve, a circle + dotted vertical line at the fixed threshold (``threshold``,
    ``miou`` of the file; none when ``threshold`` is None, e.g. for a file whose sweep only
    chose the threshold) and a star at the sweep's best (``best.threshold``,
    ``best.miou``, or the curve's maximum if ``best`` is absent).

    Args:
        metrics: name (e.g. file stem ``"seeds"``) -> metrics dict; entries without a
            sweep are ignored.

    Returns:
        PNG image bytes.

    Raises:
        ValueError: if no entry has a sweep.
    """
    curves = {name: m for name, m in metrics.items() if has_sweep(m)}
    if not curves:
        raise ValueError("sweep_plot: no metrics file has a non-empty 'sweep'")
    fig = Figure(figsize=(9.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, m) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        pts = _sweep_points(m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colour, lw=1.5, label=str(name))
        t_fixed, v_fixed = _num(m.get("threshold")), _num(m.get("miou"))
        if t_fixed is not None:
            ax.axvline(t_fixed, color=colour, ls=":", lw=1)
            if v_fixed is not None:
                ax.plot(
                    [t_fixed], [v_fixed], "o", color=colour, ms=7, mfc="white", mew=2,
                    label=f"{name} used t={t_fixed:.2f}: {v_fixed:.1f}",
                )
        best = m.get("best") if isinstance(m.get("best"), Mapping) else {}
        t_best, v_best = _num(best.get("threshold")), _num(best.get("miou"))
        if t_best is None or v_best is None:
            t_best, v_best = max(pts, key=lambda p: p[1])
        ax.plot(
            [t_best], [v_best], "*", color=colour, ms=13, mec="black", mew=0.6,
            label=f"{name} swept best t={t_best:.2f}: {v_best:.1f}",
        )
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU vs background threshold (o = used, * = swept best)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return _to_png(fig)


_ROUND_SERIES = (
    ("miou", "mIoU", "-", "o"),
    ("best_miou", "best mIoU (swept)", "-", "*"),
    ("m_under", "m_under", "--", "v"),
    ("m_over", "m_over", "--", "^"),
)


def rounds_plot(rounds: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> bytes:
    """mIoU, best mIoU, m_under and m_over per round of a multi-round method (e.g. GSLM).

    Args:
        rounds: the list ``[{"round": r, "miou": .., "best_miou": .., "m_under": ..,
            "m_over": ..}, ...]`` or the whole ``rounds.json`` dict holding it under
            ``"rounds"``. Missing keys are skipped; ``round`` defaults to the list index.

    Returns:
        PNG image bytes (mIoU curves on the left axis, m_under/m_over dashed on the right).

    Raises:
        ValueError: if there is no round with any of the four values.
    """
    if isinstance(rounds, Mapping):
        rounds = rounds.get("rounds") or []
    rows = [r for r in rounds if isinstance(r, Mapping)]
    series: dict[str, list[tuple[float, float]]] = {k: [] for k, *_ in _ROUND_SERIES}
    for i, r in enumerate(rows):
        x = _num(r.get("round"))
        x = float(i) if x is None else x
        for key in series:
            v = _num(r.get(key))
            if v is not None:
                series[key].append((x, v))
    if not any(series.values()):
        raise ValueError("rounds_plot: no round has miou, best_miou, m_under or m_over")
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax2 = ax.twinx() if (series["m_under"] or series["m_over"]) else None
    handles = []
    for i, (key, label, ls, marker) in enumerate(_ROUND_SERIES):
        pts = sorted(series[key])
        if not pts:
            continue
        target = ax2 if key in ("m_under", "m_over") else ax
        (h,) = target.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker=marker, color=f"C{i}", label=label)
        handles.append(h)
    ax.set_xlabel("round")
    ax.set_ylabel("mIoU (%)")
    if ax2 is not None:
        ax2.set_ylabel("m_under / m_over")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.set_title("per-round scores")
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    return _to_png(fig)


def per_class_bar(metrics: Mapping[str, Mapping[str, Any]], class_names: Sequence[str] | None = None) -> bytes:
    """Grouped horizontal bars of per-class IoU, one group per class, one bar per metrics file.

    Args:
        metrics: name -> metrics dict; uses each dict's ``per_class`` ({class name:
            IoU or null}); entries without it are ignored, null IoUs are drawn as gaps.
        class_names: order of the classes (defaults to first-seen order).

    Returns:
        PNG image bytes.

    Raises:
        ValueError: if no entry has a ``per_class`` dict.
    """
    tables = {
        n: m["per_class"] for n, m in metrics.items()
        if isinstance(m, Mapping) and isinstance(m.get("per_class"), Mapping) and m["per_class"]
    }
    if not tables:
        raise ValueError("per_class_bar: no metrics file has a 'per_class' table")
    order: list[str] = [str(c) for c in class_names] if class_names else []
    for t in tables.values():
        for c in t:
            if str(c) not in order:
                order.append(str(c))
    order = [c for c in order if any(c in t for t in tables.values())]
    n_cls, n_files = len(order), len(tables)
    height = max(2.5, 0.22 * n_cls * max(1, n_files) ** 0.5 + 1.2)
    fig = Figure(figsize=(6.4, height))
    ax = fig.add_subplot(1, 1, 1)
    bar_h = 0.8 / n_files
    for j, (name, t) in enumerate(tables.items()):
        ys, xs = [], []
        for i, c in enumerate(order):
            v = _num(t.get(c))
            if v is not None:
                ys.append(i - 0.4 + bar_h * (j + 0.5))
                xs.append(v)
        ax.barh(ys, xs, height=bar_h, color=f"C{j % 10}", label=str(name))
    ax.set_yticks(range(n_cls))
    ax.set_yticklabels(order, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("per-class IoU (%)")
    fig.tight_layout()
    return _to_png(fig)

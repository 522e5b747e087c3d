"""wsss.report: pictures (CAM / label-map overlays), metric plots and the HTML report of a run."""

from wsss.report.html import (
    build_report,
    format_number,
    format_percent,
    format_ratio,
    format_threshold,
    load_metrics,
)
from wsss.report.overlay import (
    as_rgb,
    cam_overlay,
    label_strip,
    mask_overlay,
    panel,
    png_bytes,
    png_data_uri,
    resize_rgb,
    save_png,
)
from wsss.report.plots import has_sweep, per_class_bar, rounds_plot, sweep_plot

__all__ = [
    "build_report",
    "load_metrics",
    "format_number",
    "format_percent",
    "format_threshold",
    "format_ratio",
    "as_rgb",
    "resize_rgb",
    "cam_overlay",
    "mask_overlay",
    "label_strip",
    "panel",
    "png_bytes",
    "png_data_uri",
    "save_png",
    "sweep_plot",
    "rounds_plot",
    "per_class_bar",
    "has_sweep",
]

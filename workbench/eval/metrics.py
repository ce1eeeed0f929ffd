"""The metric table: every metric column an evaluation writes, once, with its title, its better direction and its
group. The result tables, the plots, compare, the pipeline and the app read it; none of them lists metrics itself.

A column `<name>_proxy` is metric `<name>` computed by a built-in stand-in (workbench/eval/vbench.py): same row,
its title marked "(proxy)". The table's order is the order of every table's columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PROXY = "_proxy"


@dataclass(frozen=True)
class Metric:
    name: str                 # the results.csv column (without `_proxy`)
    title: str                # column title in tables and figures
    better: Literal["higher", "lower", "nearer"] | None  # None: a share or a degree, neither end is better
    group: str                # a table's part: timing, table1, fidelity, vbench (the dimensions), oracle,
                              # diversity (across seeds: diversity.csv, not results.csv)
    target: float | None = None   # better = "nearer": the value it is better near
    per_clip: bool = False        # shown for each clip in Compare (the oracle's object columns and PSNR)


H, L, NEAR = "higher", "lower", "nearer"

METRICS: tuple[Metric, ...] = (
    #      name                      title                     better  group
    Metric("sec_per_clip",           "s/clip",                 L,      "timing"),   # machine load: never compared
    Metric("fvd",                    "FVD",                    L,      "table1"),   # the toy FVD net (or I3D)
    Metric("fvd_ae",                 "FVD (toy-ae)",           L,      "table1"),   # the toy video autoencoder
    Metric("temporal_quality",       "Temporal Quality",       H,      "table1"),
    Metric("frame_quality",          "Frame Quality",          H,      "table1"),
    Metric("i2v_subject",            "I2V Subject",            H,      "table1"),
    Metric("i2v_background",         "I2V Background",         H,      "table1"),
    Metric("psnr",                   "PSNR",                   H,      "fidelity", per_clip=True),
    Metric("ssim",                   "SSIM",                   H,      "fidelity"),
    Metric("subject_consistency",    "subject consistency",    H,      "vbench"),
    Metric("background_consistency", "background consistency", H,      "vbench"),
    Metric("temporal_flickering",    "temporal flickering",    H,      "vbench"),
    Metric("motion_smoothness",      "motion smoothness",      H,      "vbench"),
    Metric("dynamic_degree",         "dynamic degree",         None,   "vbench"),   # more motion is not better
    Metric("aesthetic_quality",      "aesthetic quality",      H,      "vbench"),
    Metric("imaging_quality",        "imaging quality",        H,      "vbench"),
    Metric("colour_mass",            "colour mass",            H,      "oracle", per_clip=True),
    Metric("solid",                  "solid",                  H,      "oracle", per_clip=True),
    Metric("shape_iou",              "shape iou",              H,      "oracle", per_clip=True),
    Metric("count_ok",               "count ok",               H,      "oracle"),
    Metric("path_accel",             "path accel",             L,      "oracle", per_clip=True),
    Metric("first_frame_mae",        "first frame mae",        L,      "oracle", per_clip=True),
    Metric("direction_agree",        "direction agree",        H,      "oracle", per_clip=True),
    Metric("speed_agree",            "speed agree",            H,      "oracle"),
    Metric("sharpness",              "sharpness",              NEAR,   "oracle", target=1.0),  # 1: as crisp as real
    Metric("background_mae",         "background mae",         L,      "oracle"),
    Metric("wake_mae",               "wake mae",               L,      "oracle"),
    Metric("free_right",             "free right",             None,   "oracle"),   # shares of directions taken
    Metric("free_left",              "free left",              None,   "oracle"),   # where the caption states none
    Metric("free_up",                "free up",                None,   "oracle"),
    Metric("free_down",              "free down",              None,   "oracle"),
    # across the noise seeds of one (method, steps), per first frame (workbench/eval/diversity.py); not per seed
    Metric("pixel_spread",           "pixel spread",           None,   "diversity"),  # noise spreads clips too
    Metric("direction_agreement",    "direction agreement",    L,      "diversity"),  # 1: every seed the same way
)
BY_NAME = {m.name: m for m in METRICS}
HEADLINE = "fvd"              # the metric a figure or a view shows when none is chosen (Figure 7)


def metric(column: str) -> Metric | None:
    """The row of a results.csv column ('temporal_quality_proxy' -> temporal_quality's), None if it has none."""
    return BY_NAME.get(column.removesuffix(PROXY))


def title(column: str) -> str:
    """Column title: 'temporal_quality_proxy' -> 'Temporal Quality (proxy)'; an unknown 'a_b' -> 'a b'."""
    base, proxy = (column[:-len(PROXY)], " (proxy)") if column.endswith(PROXY) else (column, "")
    m = BY_NAME.get(base)
    return (m.title if m else base.replace("_", " ")) + proxy


def names(*groups: str) -> list[str]:
    """The metrics of `groups` (every metric if none), in table order."""
    return [m.name for m in METRICS if not groups or m.group in groups]


def in_groups(column: str, *groups: str) -> bool:
    """Is `column` (or the metric its proxy stands in for) one of `groups`' metrics?"""
    m = metric(column)
    return m is not None and m.group in groups


def column_of(name: str, columns) -> str | None:
    """The column of `columns` holding metric `name`: itself, else its proxy; None if neither."""
    return next((c for c in (name, name + PROXY) if c in columns), None)


def verdict(column: str, a: float, b: float) -> int:
    """+1 if value b is better than value a of `column`, -1 if worse, 0 if the column has no better direction."""
    m = metric(column)
    if m is None or m.better is None:
        return 0
    if m.better == "nearer":
        return _sign(abs(a - m.target) - abs(b - m.target))
    return _sign(a - b) if m.better == "lower" else _sign(b - a)


def _sign(x: float) -> int:
    return int(x > 0) - int(x < 0)

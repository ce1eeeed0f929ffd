"""Plotly figures from run folders (through workbench.runs) and result tables. No computation lives here.

Importing this module changes no global setting: a notebook calls `notebook_renderer()` once, in its first code
cell, so its figures survive `jupyter nbconvert --to html`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image

from workbench.eval.metrics import HEADLINE, column_of, in_groups
from workbench.eval.tables import display, summarise

NOTEBOOK_RENDERER = "plotly_mimetype+notebook"
# The training curves a run logs in metrics.jsonl, by the figure that draws them: the one list the app and the
# pipeline read (the pipeline writes <eval>/<figure>.html for each figure some stage logged)
CURVES = {"win_diff": ("win_diff",),                                                   # TA: Figure 8
          "training_curves": ("loss", "loss_distill", "loss_adv_g", "loss_d", "loss_dpo", "loss_rf"),
          "discriminator_logits": ("logit_real", "logit_fake")}                         # DA: hinge logits


def notebook_renderer() -> None:
    """Make `fig.show()` in this (Jupyter) process store each figure twice: as plotly's mimetype (JupyterLab draws
    it) and as HTML with plotly.js embedded once per notebook, so `jupyter nbconvert --to html` keeps every figure,
    offline. Plotly's own default in a Jupyter kernel is the mimetype alone, which the HTML export drops. It sets
    plotly's process-wide default renderer, so a notebook opts in by calling it; importing this module does not."""
    pio.renderers.default = NOTEBOOK_RENDERER


def training_curves(runs: dict[str, str | Path], keys: tuple[str, ...] = ("loss",), log_y: bool = True) -> go.Figure:
    """One line per (run, key) against step, each over the steps that logged it (a key logged every other row
    has NaN between: dropped per series, or the line would draw no segment)."""
    from workbench.runs import Run  # torch and the models: imported when a curve is drawn, not with the app
    frames = []
    for name, run in runs.items():
        df = Run(run).metrics
        for key in keys:
            if key in df:
                logged = df[["step", key]].dropna()
                frames.append(pd.DataFrame({"step": logged["step"], "value": logged[key], "curve": f"{name}: {key}"}))
    data = pd.concat(frames, ignore_index=True)
    fig = px.line(data, x="step", y="value", color="curve", log_y=log_y, title="training curves")
    return fig.update_layout(height=380, legend_title_text="")


def image_figure(png: str | Path, title: str = "") -> go.Figure:
    """A PNG (e.g. a contact sheet) as a figure at one screen pixel per image pixel (labels stay readable),
    embedded PNG-encoded (binary_string) rather than as a JSON array of pixels."""
    img = np.asarray(Image.open(png).convert("RGB"))
    fig = px.imshow(img, title=title, binary_string=True)
    fig.update_xaxes(visible=False).update_yaxes(visible=False)
    return fig.update_layout(width=img.shape[1] + 20, height=img.shape[0] + 50, margin=dict(l=10, r=10, t=40, b=10))


def _label(metric: str) -> str:
    return display(metric)


def _long(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    return pd.DataFrame({"method": summary[("method", "")], "steps": summary[("steps", "")],
                         "mean": summary[("mean", metric)], "std": summary[("std", metric)]})


def metric_vs_steps(summary: pd.DataFrame, metric: str) -> go.Figure:
    """Figure 7 style: a metric (mean with spread over seeds) against sampling steps, a line per method."""
    df = _long(summary, metric)
    fig = px.line(df, x="steps", y="mean", error_y="std", color="method", markers=True, log_x=True,
                  title=f"{_label(metric)} against sampling steps")
    fig.update_xaxes(tickvals=sorted(df["steps"].unique()))
    return fig.update_layout(height=380, yaxis_title=_label(metric))


def evaluation_figures(results: pd.DataFrame, folder: str | Path) -> None:
    """The figures of an evaluation's rows (workbench.eval.report.evaluate's `draw`): folder/fvd_vs_steps.html,
    Figure 7, with plotly.js from its CDN."""
    metric_vs_steps(summarise(results), "fvd").write_html(Path(folder) / "fvd_vs_steps.html", include_plotlyjs="cdn")


def results_view(results: pd.DataFrame, metric: str = HEADLINE) -> tuple[go.Figure, pd.DataFrame, go.Figure | None]:
    """An evaluation's rows as the app shows them: `metric` (its proxy where the table has that, else the headline
    metric) against steps, the means over seeds as one flat table, and the VBench-I2V dimensions (None if none)."""
    summary = summarise(results)
    columns = summary["mean"].columns
    flat = summary["mean"].copy()
    flat.insert(0, "steps", summary["steps"])
    flat.insert(0, "method", summary["method"])
    dims = [c for c in columns if in_groups(c, "vbench")]
    vbench = ablation_table(summary, dims, "VBench-I2V dimensions, mean ± std over seeds") if dims else None
    return metric_vs_steps(summary, column_of(metric, columns) or HEADLINE), flat.round(3), vbench


def method_bars(summary: pd.DataFrame, metric: str, steps: list[int] | None = None) -> go.Figure:
    """Bars per method, grouped by step count, mean with spread over seeds (error bars)."""
    df = _long(summary, metric)
    if steps is not None:
        df = df[df["steps"].isin(steps)]
    df = df.assign(steps=df["steps"].astype(str) + " steps")
    fig = px.bar(df, x="method", y="mean", error_y="std", color="steps", barmode="group",
                 title=f"{_label(metric)} per method")
    return fig.update_layout(height=380, yaxis_title=_label(metric), legend_title_text="")


def ablation_table(summary: pd.DataFrame, metrics: list[str], title: str = "") -> go.Figure:
    """Table 2 style: one row per (method, steps), 'mean ± std' over seeds per metric."""
    cells = [summary[("method", "")].tolist(), summary[("steps", "")].tolist()]
    for m in metrics:
        cells.append([f"{a:.3g} ± {b:.2g}" for a, b in zip(summary[("mean", m)], summary[("std", m)])])
    fig = go.Figure(go.Table(header=dict(values=["method", "steps", *[_label(m) for m in metrics]], align="left"),
                             cells=dict(values=cells, align="left")))
    return fig.update_layout(title=title, height=120 + 28 * len(summary), margin=dict(l=10, r=10, t=40, b=10))


def best_share_bars(best: pd.DataFrame) -> go.Figure:
    """Figure 4: per criterion, the share of best-of-N votes each entrant won."""
    fig = px.bar(best, x="criterion", y="share", color="entrant", barmode="group", hover_data=["chosen", "votes"],
                 title="chosen best (share of best-of-N votes)")
    return fig.update_layout(height=380, yaxis_tickformat=".0%")


def strength_intervals(strengths: pd.DataFrame) -> go.Figure:
    """Bradley-Terry strengths per criterion with their bootstrap intervals."""
    df = strengths.assign(plus=strengths["hi"] - strengths["strength"], minus=strengths["strength"] - strengths["lo"])
    fig = px.scatter(df, x="entrant", y="strength", color="criterion", error_y="plus", error_y_minus="minus",
                     title="Bradley-Terry strength (log-odds, mean 0) with bootstrap 95% intervals")
    return fig.update_layout(height=380)


def human_vs_metric(strengths: pd.DataFrame, results: pd.DataFrame, metric: str = HEADLINE,
                    criterion: str = "frame_quality") -> go.Figure:
    """Each study entrant (method@steps) placed by its Bradley-Terry strength against an automatic metric of the
    same model at the same steps (mean over seeds): does the metric agree with people?"""
    means = results.groupby(["method", "steps"])[metric].mean()
    s = strengths[strengths["criterion"] == criterion].copy()
    s[metric] = [means.get(tuple([e.rsplit("@", 1)[0], int(e.rsplit("@", 1)[1])]), float("nan")) for e in s["entrant"]]
    fig = px.scatter(s, x=metric, y="strength", text="entrant", error_y=s["hi"] - s["strength"],
                     error_y_minus=s["strength"] - s["lo"],
                     title=f"people ({criterion.replace('_', ' ')}, Bradley-Terry) against {_label(metric)}")
    return fig.update_traces(textposition="top center").update_layout(height=380)

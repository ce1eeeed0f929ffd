"""Plotly figures from run folders (metrics.jsonl) and result tables. No computation lives here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from PIL import Image


def read_metrics(run: str | Path) -> pd.DataFrame:
    """A run's metrics.jsonl as a DataFrame (one row per logged step)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is this a run folder?)")
    return pd.DataFrame([json.loads(r) for r in path.read_text().splitlines() if r.strip()])


def training_curves(runs: dict[str, str | Path], keys: tuple[str, ...] = ("loss",), log_y: bool = True) -> go.Figure:
    """One line per (run, key) against step."""
    frames = []
    for name, run in runs.items():
        df = read_metrics(run)
        for key in keys:
            if key in df:
                frames.append(pd.DataFrame({"step": df["step"], "value": df[key], "curve": f"{name}: {key}"}))
    data = pd.concat(frames, ignore_index=True)
    fig = px.line(data, x="step", y="value", color="curve", log_y=log_y, title="training curves")
    return fig.update_layout(height=380, legend_title_text="")


def image_figure(png: str | Path, title: str = "") -> go.Figure:
    """A PNG (e.g. a contact sheet) as a figure."""
    img = np.asarray(Image.open(png).convert("RGB"))
    fig = px.imshow(img, title=title)
    fig.update_xaxes(visible=False).update_yaxes(visible=False)
    return fig.update_layout(height=max(300, min(1200, img.shape[0] + 80)), margin=dict(l=10, r=10, t=40, b=10))


def metric_vs_steps(summary: pd.DataFrame, metric: str) -> go.Figure:
    """Figure 7 style: a metric (mean with spread over seeds) against sampling steps, a line per method."""
    df = pd.DataFrame({"method": summary[("method", "")], "steps": summary[("steps", "")],
                       "mean": summary[("mean", metric)], "std": summary[("std", metric)]})
    fig = px.line(df, x="steps", y="mean", error_y="std", color="method", markers=True, log_x=True,
                  title=f"{metric} against sampling steps")
    return fig.update_layout(height=380, yaxis_title=metric)

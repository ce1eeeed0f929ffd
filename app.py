"""The SwiftVideo workbench app: compare models side by side, read results, browse runs.

    python app.py [--experiments experiments] [--cache runs/app-cache] [--host 127.0.0.1] [--port 7860]

Layout and callbacks only; every computation is a call into `workbench` (compare, runs, plots, eval.tables).
Binds loopback unless --host says otherwise, never shares, and serves only the compare cache and the
experiment folders' images and videos.
"""
from __future__ import annotations

import argparse
import difflib
import html
import random
from pathlib import Path

import gradio as gr
import pandas as pd

from workbench import compare, plots
from workbench.eval.tables import summarise
from workbench.runs import Run, find_eval_tables, find_runs

TITLE = "SwiftVideo workbench"


def video_grid(real: compare.Shown, shown: list[compare.Shown]) -> str:
    """Looping videos in one grid, each with its label and metrics below it."""
    cells = []
    for s in [real, *shown]:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in s.metrics.items())
        cells.append(f'<figure class="clip"><video src="/gradio_api/file={s.video.resolve()}" autoplay loop muted '
                     f'playsinline width="192" height="192"></video><figcaption>{html.escape(s.label)}</figcaption>'
                     f'<table class="metrics">{rows}</table></figure>')
    return f'<div class="grid">{"".join(cells)}</div>'


CSS = """
.grid {display: flex; flex-wrap: wrap; gap: 12px}
.clip {margin: 0; text-align: center; font-size: 13px}
.metrics {margin: 4px auto; font-size: 11px}
.metrics td {padding: 0 4px}
"""


def build(experiments: list[Path], cache: Path) -> gr.Blocks:
    models = compare.model_folders(*experiments)
    options = compare.choices(models)
    test_size = compare.cached_config(next(iter(models.values()))).data.test_size if models else 1
    defaults = [c for c in options if c.endswith(("teacher @ 8", "ccd @ 4", "swiftvideo @ 4"))]

    def on_compare(clip, picks, seed):
        try:
            info, real, shown, strip = compare.compare([compare.parse_choice(c, models) for c in picks],
                                                       int(clip), int(seed), cache)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        table = pd.DataFrame([{"video": s.label, **s.metrics} for s in shown]).round(3)
        return info["caption"], info["first_frame"], video_grid(real, shown), str(strip), table

    runs = [str(p) for p in find_runs(*experiments)]
    tables = [str(p) for p in find_eval_tables(*experiments)]

    def on_run(path):
        if not path:
            return "", None, [], None
        run = Run(path)
        config = (run.path / "config.yaml").read_text()
        keys = [k for k in ("loss", "loss_distill", "loss_adv_g", "loss_d", "win_diff") if k in run.metrics]
        curves = plots.training_curves({run.path.name: run.path}, tuple(keys), log_y=False) if keys else None
        sheets = [str(p) for p in [*run.samples, *sorted(run.path.glob("*.png"))]]
        evals = run.eval_tables()
        table = next(iter(evals.values())) if evals else None
        return config, curves, sheets, table

    def on_diff(a, b):
        if not (a and b):
            return ""
        text = lambda p: (Path(p) / "config.yaml").read_text().splitlines()  # noqa: E731
        return "\n".join(difflib.unified_diff(text(a), text(b), a, b, lineterm="")) or "(the same config)"

    def on_results(path, metric):
        if not path:
            return None, None
        summary = summarise(pd.read_csv(path))
        metric = metric if metric in summary["mean"].columns else "fvd"
        flat = summary["mean"].copy()
        flat.insert(0, "steps", summary["steps"])
        flat.insert(0, "method", summary["method"])
        return plots.metric_vs_steps(summary, metric), flat.round(3)

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}")
        with gr.Tab("Compare"):
            with gr.Row():
                clip = gr.Number(value=0, precision=0, minimum=0, maximum=test_size - 1, label="test clip")
                pick_random = gr.Button("random clip")
                seed = gr.Number(value=0, precision=0, label="noise seed")
            picks = gr.CheckboxGroup(options, value=defaults, label="models @ steps (same first frame and noise)")
            go = gr.Button("compare", variant="primary")
            with gr.Row():
                caption = gr.Textbox(label="caption", interactive=False)
                first = gr.Image(label="first frame", height=160, interactive=False)
            grid = gr.HTML()
            strip = gr.Image(label="every frame of every video, in rows", interactive=False)
            metrics = gr.Dataframe(label="oracle metrics of this clip (against its ground truth)", interactive=False)
            pick_random.click(lambda: random.randrange(test_size), outputs=clip)
            go.click(on_compare, [clip, picks, seed], [caption, first, grid, strip, metrics])
            app.load(on_compare, [clip, picks, seed], [caption, first, grid, strip, metrics])
        with gr.Tab("Results"):
            table_path = gr.Dropdown(tables, value=tables[0] if tables else None, label="evaluation (results.csv)")
            metric = gr.Dropdown(["fvd", "solid", "shape_iou", "psnr", "ssim", "first_frame_mae", "sharpness"],
                                 value="fvd", label="metric against steps")
            figure = gr.Plot()
            summary_table = gr.Dataframe(label="mean over seeds", interactive=False)
            for c in (table_path, metric):
                c.change(on_results, [table_path, metric], [figure, summary_table])
            app.load(on_results, [table_path, metric], [figure, summary_table])
        with gr.Tab("Runs"):
            run_path = gr.Dropdown(runs, value=runs[0] if runs else None, label="run or model folder")
            config = gr.Code(language="yaml", label="config.yaml")
            curves = gr.Plot(label="training curves")
            sheets = gr.Gallery(label="sample sheets", columns=2, height="auto")
            eval_table = gr.Dataframe(label="eval table", interactive=False)
            run_path.change(on_run, run_path, [config, curves, sheets, eval_table])
            with gr.Row():
                diff_a = gr.Dropdown(runs, label="config A")
                diff_b = gr.Dropdown(runs, label="config B")
            diff = gr.Code(language="markdown", label="diff of the two configs")
            for c in (diff_a, diff_b):
                c.change(on_diff, [diff_a, diff_b], diff)
            app.load(on_run, run_path, [config, curves, sheets, eval_table])
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=TITLE)
    ap.add_argument("--experiments", nargs="+", default=["experiments"], help="folders of model and run folders")
    ap.add_argument("--cache", default="runs/app-cache", help="where compared clips are written")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    experiments = [Path(e).resolve() for e in args.experiments]
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    build(experiments, cache).launch(server_name=args.host, server_port=args.port, share=False, css=CSS,
                                     allowed_paths=[str(cache), *map(str, experiments)])


if __name__ == "__main__":
    main()

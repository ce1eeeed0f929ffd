"""The SwiftVideo workbench app: compare models side by side, run the blind user study, read results, browse runs.

    python app.py [--experiments experiments] [--study experiments/toy/study] [--users FILE]
                  [--votes runs/app-votes.sqlite] [--cache runs/app-cache] [--host 127.0.0.1] [--port 7860]

Layout and callbacks only; every computation is a call into `workbench` (compare, runs, plots, eval.tables).
Binds loopback unless --host says otherwise, never shares, and serves only the compare cache, the study's videos
and first frames, and the experiment folders; never the votes database or the study manifest. With --users
(lines `name:password`, stored hashed) every page asks for a login and the Study tab collects votes; the page
names no method until a vote is stored.
"""
from __future__ import annotations

import difflib
import html
import random
import sys
from pathlib import Path

import gradio as gr
import pandas as pd

from workbench import compare, plots
from workbench.__main__ import OneLineParser, one_line
from workbench.eval.tables import DIMENSIONS, summarise
from workbench.runs import Run, find_eval_tables, find_runs
from workbench.study import PAIRWISE_CHOICES, VoteStore, load_study, study_results
from workbench.study.votes import chosen_slot, read_users

APP_VERSION = "app-1"
MODES = {"best of N (the paper's protocol)": "best_of_n", "pairwise arena (A/B)": "pairwise"}

TITLE = "SwiftVideo workbench"


def video_grid(real: compare.Shown | None, shown: list[compare.Shown]) -> str:
    """Looping videos in one grid, each with its label and metrics below it."""
    cells = []
    for s in [real, *shown] if real else shown:
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


def study_tab(study, store: VoteStore | None):
    """Blind votes: an item's videos in a fresh order per annotator, votes enabled once every video has played."""
    if study is None or store is None:
        gr.Markdown("Voting needs annotators: start the app with `--users FILE` (`name:password` lines, stored "
                    "hashed; there is no default password); it then shows annotators this tab only. `--study DIR` "
                    "chooses another study than the shipped toy one (`python -m workbench study build`).")
        return None
    n = len(study.manifest["models"])
    criteria = list(study.criteria)
    mode = gr.Radio(list(MODES), value=next(iter(MODES)), label="mode")
    left = gr.Markdown()
    with gr.Row():
        caption = gr.Textbox(label="caption", interactive=False)
        first = gr.Image(label="first frame (the videos must continue it)", height=192, interactive=False)
    with gr.Row():
        videos = [gr.Video(label=str(i + 1), height=240, autoplay=False, loop=False, interactive=False)
                  for i in range(n)]
    radios = [gr.Radio([], label=c.replace("_", " "), interactive=False) for c in criteria]
    submit = gr.Button("submit votes", variant="primary", interactive=False)
    shown = gr.State(None)    # what this annotator was served: item id and video names, never a method
    played = gr.State(set())

    def serve(mode_label, request: gr.Request):
        m = MODES[mode_label]
        item = store.next_item(study, request.username, m)
        if item is None:
            return (None, set(), "All items are voted in this mode: thank you.", "", None,
                    *[gr.update(value=None, visible=False) for _ in videos],
                    *[gr.update(choices=[], value=None, interactive=False) for _ in radios],
                    gr.update(interactive=False))
        slots = ["A", "B"] if m == "pairwise" else [str(i + 1) for i in range(len(item.videos))]
        choices = [*slots, *PAIRWISE_CHOICES[2:]] if m == "pairwise" else slots
        return ({"item": item.item, "mode": m, "videos": list(item.videos)}, set(),
                f"**{item.left}** item{'s' * (item.left != 1)} left in this mode. Play every video, then vote.",
                item.caption, str(study.frame_path(item.first_frame)),
                *[gr.update(value=str(study.video_path(v)), label=slots[i], visible=True) if i < len(item.videos)
                  else gr.update(value=None, visible=False) for i, v in enumerate([*item.videos, *[None] * n][:n])],
                *[gr.update(choices=choices, value=None, interactive=False) for _ in radios],
                gr.update(interactive=False))

    def ended(i, state, seen):
        seen = seen | {i}
        ready = state is not None and len(seen) >= len(state["videos"])
        # enable once ready, never disable here: the page may apply these replies out of order (videos ending
        # together), and an earlier "not yet" applied last left the votes disabled; serve() disables them per item
        enable = gr.update(interactive=True) if ready else gr.update()
        return seen, *[enable for _ in radios], enable

    def vote(request: gr.Request, state, seen, *choices):  # gradio injects the request into a leading parameter
        if state is None or len(seen) < len(state["videos"]):
            raise gr.Error("play every video before voting")
        if any(c is None for c in choices):
            raise gr.Error("choose an answer for every criterion")
        pairwise = state["mode"] == "pairwise"   # pairwise answers are stored as they read; best of N as the slot
        for criterion, choice in zip(criteria, choices):
            value = choice if pairwise else chosen_slot(choice, state["mode"], first=1)  # the page numbers 1..N
            try:
                store.vote(study, request.username, state["item"], criterion, state["mode"], value,
                           videos=state["videos"], app_version=APP_VERSION)
            except ValueError as e:
                raise gr.Error(str(e)) from None
        gr.Info("votes stored")   # only after every vote is committed

    outputs = [shown, played, left, caption, first, *videos, *radios, submit]
    for i, v in enumerate(videos):  # api names: what gradio_client calls in bench/app.py's load test
        v.end(lambda state, seen, i=i: ended(i, state, seen), [shown, played], [played, *radios, submit],
              api_name=f"played_{i}", concurrency_id="played", concurrency_limit=1)  # one at a time: none is lost
    mode.change(serve, mode, outputs, api_name="next_item")
    submit.click(vote, [shown, played, *radios], None, api_name="vote").success(serve, mode, outputs)
    return serve, mode, outputs


def study_results_section(store: VoteStore | None, study):
    """Reviewers: share chosen best, Bradley-Terry strengths with intervals, win rates, attention, agreement."""
    if store is None or study is None:
        return None
    gr.Markdown("## The user study (votes of flagged annotators left out)")
    summary = gr.Markdown()
    with gr.Row():
        best = gr.Plot()
        strengths = gr.Plot()
    versus = gr.Plot()
    wins = gr.Dataframe(label="win rate of row over column (ties count half), frame quality", interactive=False)
    agree = gr.Dataframe(label="inter-annotator agreement", interactive=False)
    annotators = gr.Dataframe(label="annotators: attention checks seen, failed, flagged", interactive=False)
    refresh = gr.Button("refresh study results")

    evaluated = study.path / "eval" / "results.csv"   # the study's own models evaluated at their step counts

    def on_refresh():
        r = study_results(store.votes(study))
        if r.counted_votes == 0:
            return "No counted votes yet.", None, None, None, None, None, None
        text = (f"{r.counted_votes} votes counted; {r.excluded_votes} left out from {len(r.flagged)} annotator(s) "
                f"flagged by attention checks.")
        matrix = r.win_rates.get("frame_quality")
        versus_fvd = plots.human_vs_metric(r.strengths, pd.read_csv(evaluated)) if evaluated.is_file() else None
        return (text, plots.best_share_bars(r.best_share) if len(r.best_share) else None,
                plots.strength_intervals(r.strengths), versus_fvd,
                None if matrix is None else matrix.round(3).reset_index(), r.agreement, r.attention)

    outputs = [summary, best, strengths, versus, wins, agree, annotators]
    refresh.click(on_refresh, None, outputs)
    return on_refresh, outputs


def build(experiments: list[Path], cache: Path, study=None, store: VoteStore | None = None, voting: bool = False
          ) -> gr.Blocks:
    loaded = compare.Loaded()  # the configs and models this app has read, kept for its lifetime
    models = compare.model_folders(*experiments)
    options = compare.choices(models, loaded)
    test_size = loaded.config(next(iter(models.values()))).data.test_size if models else 1
    defaults = [c for c in options if c.endswith(("teacher @ 8", "ccd @ 4", "swiftvideo @ 4"))]

    def on_compare(clip, picks, seed):
        try:
            info, real, shown, strip = compare.compare([compare.parse_choice(c, models, loaded) for c in picks],
                                                       int(clip), int(seed), cache, loaded)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        table = pd.DataFrame([{"video": s.label, **s.metrics} for s in shown]).round(3)
        return info["caption"], info["first_frame"], video_grid(real, shown), str(strip), table

    def on_item(item):
        if not item:
            return "", ""
        caption, _, shown = compare.prerendered(study, item)
        return caption, video_grid(None, shown)

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

    def on_curves(key):
        having = {Path(r).name: r for r in runs if key in Run(r).metrics}
        return plots.training_curves(having, (key,), log_y=False) if having else None

    def on_results(path, metric):
        if not path:
            return None, None, None
        summary = summarise(pd.read_csv(path))
        metric = metric if metric in summary["mean"].columns else "fvd"
        flat = summary["mean"].copy()
        flat.insert(0, "steps", summary["steps"])
        flat.insert(0, "method", summary["method"])
        dims = [c for c in summary["mean"].columns if c.removesuffix("_proxy") in DIMENSIONS]
        vbench = plots.ablation_table(summary, dims, "VBench-I2V dimensions, mean ± std over seeds") if dims else None
        return plots.metric_vs_steps(summary, metric), flat.round(3), vbench

    shipped_tables = [str(p) for root in experiments for p in sorted(root.rglob("*table.md"))]

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}")
        if voting:  # annotators see the study only: the other tabs name methods and could replay a study clip
            with gr.Tab("Study"):
                served = study_tab(study, store)
            app.load(*served)
            return app
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
            if study is not None:
                with gr.Accordion("pre-rendered: the study set's items, labelled (any scale)", open=False):
                    ranked = [i for i, it in study.items.items() if not it["attention"]]
                    item = gr.Dropdown(ranked, value=ranked[0] if ranked else None, label="item")
                    item_caption = gr.Textbox(label="caption", interactive=False)
                    item_grid = gr.HTML()
                    item.change(on_item, item, [item_caption, item_grid])
                    app.load(on_item, item, [item_caption, item_grid])
            pick_random.click(lambda: random.randrange(test_size), outputs=clip)
            go.click(on_compare, [clip, picks, seed], [caption, first, grid, strip, metrics])
            app.load(on_compare, [clip, picks, seed], [caption, first, grid, strip, metrics])
        with gr.Tab("Study"):
            study_tab(study, None)
        with gr.Tab("Results"):
            table_path = gr.Dropdown(tables, value=tables[0] if tables else None, label="evaluation (results.csv)")
            metric = gr.Dropdown(["fvd", "fvd_ae", "solid", "shape_iou", "background_mae", "wake_mae", "psnr", "ssim",
                                  "first_frame_mae", "sharpness"],
                                 value="fvd", label="metric against steps")
            figure = gr.Plot()
            summary_table = gr.Dataframe(label="mean over seeds", interactive=False)
            vbench = gr.Plot(label="VBench-I2V dimensions per method")
            curve_key = gr.Dropdown(["win_diff", "loss", "loss_distill", "loss_adv_g", "loss_d", "logit_real",
                                     "logit_fake"], value="win_diff", label="training curve of every run that logged it")
            curve = gr.Plot()
            curve_key.change(on_curves, curve_key, curve)
            app.load(on_curves, curve_key, curve)
            for c in (table_path, metric):
                c.change(on_results, [table_path, metric], [figure, summary_table, vbench])
            app.load(on_results, [table_path, metric], [figure, summary_table, vbench])
            shipped = gr.Dropdown(shipped_tables, value=next((t for t in shipped_tables if "ablations" in t), None),
                                  label="a shipped table (Table 1 and Table 2 layouts: evaluations and ablations)")
            shipped_md = gr.Markdown()
            show_table = lambda p: Path(p).read_text() if p else ""  # noqa: E731
            shipped.change(show_table, shipped, shipped_md)
            app.load(show_table, shipped, shipped_md)
            refreshed = study_results_section(store, study)
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
        if refreshed:
            app.load(refreshed[0], None, refreshed[1])
    return app


def main(argv: list[str] | None = None) -> None:
    ap = OneLineParser(prog="app.py", description=TITLE)
    ap.add_argument("--experiments", nargs="+", default=["experiments"], help="folders of model and run folders")
    ap.add_argument("--cache", default="runs/app-cache", help="where compared clips are written")
    ap.add_argument("--study", default="experiments/toy/study", help="a study folder (python -m workbench study build)")
    ap.add_argument("--users", help="annotators, `name:password` per line (stored hashed); enables login and votes")
    ap.add_argument("--votes", default="runs/app-votes.sqlite", help="the votes database (never served)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    try:
        launch(args)
    except (ValueError, OSError) as e:  # a bad study folder, users file or path: one line, exit 2
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def launch(args) -> None:
    # every argument is checked before anything is written: a bad one leaves no votes database or cache behind
    users = read_users(args.users) if args.users else None
    study = load_study(args.study) if args.study and Path(args.study).is_dir() else None
    if users is not None and study is None:
        raise ValueError(f"--users: votes need a study folder, and --study {args.study} is none")
    for folder in args.experiments:
        if not Path(folder).is_dir():
            raise NotADirectoryError(f"--experiments {folder}: no such folder; expected a folder of model and run "
                                     f"folders")
    cache, votes = Path(args.cache).resolve(), Path(args.votes).resolve()
    if cache.exists() and not cache.is_dir():
        raise NotADirectoryError(f"--cache {args.cache}: is a file; expected a folder for the compared clips")
    if votes.is_dir():
        raise IsADirectoryError(f"--votes {args.votes}: is a folder; expected the votes database file")
    experiments = [Path(e).resolve() for e in args.experiments]
    voting = users is not None
    store = None
    if study is not None:
        votes.parent.mkdir(parents=True, exist_ok=True)
        store = VoteStore(votes)
    for name, password in (users or {}).items():
        store.add_annotator(name, password)
    cache.mkdir(parents=True, exist_ok=True)
    media = [str(study.path.resolve() / "videos"), str(study.path.resolve() / "frames")] if study else []
    allowed = media if voting else [str(cache), *media, *map(str, experiments)]  # annotators: the study's media only
    blocked = [str(votes), *([str(study.path.resolve() / "manifest.json")] if study else [])]
    build(experiments, cache, study, store, voting=voting).launch(
        server_name=args.host, server_port=args.port, share=False, css=CSS,
        auth=store.check_login if voting else None, allowed_paths=allowed, blocked_paths=blocked)


if __name__ == "__main__":
    main()

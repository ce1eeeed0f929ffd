"""The SwiftVideo workbench app: compare models side by side, run the blind user study, read results, browse runs.

    python app.py [--experiments experiments] [--study experiments/toy/study] [--users FILE]
                  [--votes runs/app-votes.sqlite] [--cache runs/app-cache] [--host 127.0.0.1] [--port 7860]

Layout and callbacks only, one function per tab; every computation and every file goes through `workbench`: compare
(the Compare tab), runs (run and model folders, evaluation tables), study (the study set, its votes and results) and
plots (figures). Metric names come from the metric table (workbench/eval/metrics.py), curve names from plots.CURVES.
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
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from workbench import compare, plots
from workbench.cli import OneLineParser, one_line
from workbench.eval.metrics import HEADLINE, names as metric_names
from workbench.runs import Run, find_eval_tables, find_models, find_runs, find_tables
from workbench.study import PAIRWISE_CHOICES, VoteStore, load_study, study_results
from workbench.study.votes import chosen_slot, read_users

APP_VERSION = "app-1"
MODE_LABELS = {"best of N (the paper's protocol)": "best_of_n", "pairwise arena (A/B)": "pairwise"}  # -> votes.MODES

TITLE = "SwiftVideo workbench"
DEFAULT_PICKS = ("teacher @ 8", "ccd @ 4", "swiftvideo @ 4")                # the Compare tab's first view
RUN_CURVES = (*plots.CURVES["training_curves"], *plots.CURVES["win_diff"])  # the Runs tab: losses and Win Diff
CURVE_KEYS = [key for keys in plots.CURVES.values() for key in keys]       # the Results tab: Win Diff first


def video_grid(real: compare.LabelledVideo | None, shown: list[compare.LabelledVideo]) -> str:
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


# --- Compare: models side by side on one clip -------------------------------------------------------------------

def compare_tab(app: gr.Blocks, experiments: list[Path], cache: Path, study) -> None:
    """Toy-scale models sampled on demand from one test clip's first frame and noise; a study set's items labelled."""
    loaded = compare.Loaded()  # the configs and models this app has read, kept for its lifetime
    models = find_models(*experiments)
    options = compare.choices(models, loaded)
    test_size = loaded.config(next(iter(models.values()))).data.test_size if models else 1

    def on_compare(clip, picks, seed):
        try:
            info, real, shown, strip = compare.compare([compare.parse_choice(c, models, loaded) for c in picks],
                                                       int(clip), int(seed), cache, loaded)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        table = pd.DataFrame([{"video": s.label, **s.metrics} for s in shown]).round(3)
        return info["caption"], info["first_frame"], video_grid(real, shown), str(strip), table

    with gr.Row():
        clip = gr.Number(value=0, precision=0, minimum=0, maximum=test_size - 1, label="test clip")
        pick_random = gr.Button("random clip")
        seed = gr.Number(value=0, precision=0, label="noise seed")
    picks = gr.CheckboxGroup(options, value=[c for c in options if c.endswith(DEFAULT_PICKS)],
                             label="models @ steps (same first frame and noise)")
    go = gr.Button("compare", variant="primary")
    with gr.Row():
        caption = gr.Textbox(label="caption", interactive=False)
        first = gr.Image(label="first frame", height=160, interactive=False)
    grid = gr.HTML()
    strip = gr.Image(label="every frame of every video, in rows", interactive=False)
    metrics = gr.Dataframe(label="oracle metrics of this clip (against its ground truth)", interactive=False)
    if study is not None:
        prerendered_section(app, study)
    pick_random.click(lambda: random.randrange(test_size), outputs=clip)
    go.click(on_compare, [clip, picks, seed], [caption, first, grid, strip, metrics])
    app.load(on_compare, [clip, picks, seed], [caption, first, grid, strip, metrics])


def prerendered_section(app: gr.Blocks, study) -> None:
    """Reviewers: the study set's items, each video labelled (Compare at any scale, where sampling is too slow)."""
    def on_item(item):
        if not item:
            return "", ""
        caption, _, shown = compare.prerendered(study, item)
        return caption, video_grid(None, shown)

    with gr.Accordion("pre-rendered: the study set's items, labelled (any scale)", open=False):
        ranked = [i for i, it in study.items.items() if not it["attention"]]
        item = gr.Dropdown(ranked, value=ranked[0] if ranked else None, label="item")
        item_caption = gr.Textbox(label="caption", interactive=False)
        item_grid = gr.HTML()
        item.change(on_item, item, [item_caption, item_grid])
        app.load(on_item, item, [item_caption, item_grid])


# --- Study: blind votes -----------------------------------------------------------------------------------------

@dataclass
class StudyPage:
    """The Study tab's components: one item as one annotator sees it."""
    mode: gr.Radio
    left: gr.Markdown
    caption: gr.Textbox
    first: gr.Image
    videos: list[gr.Video]
    radios: list[gr.Radio]   # one per criterion
    submit: gr.Button
    shown: gr.State          # what this annotator was served: item id and video names, never a method
    played: gr.State         # the video slots this annotator has played to the end

    @property
    def outputs(self) -> list:
        return [self.shown, self.played, self.left, self.caption, self.first, *self.videos, *self.radios, self.submit]


def study_page(n: int, criteria: list[str]) -> StudyPage:
    """The layout: a mode, the item's caption and first frame, n video slots, an answer per criterion, submit."""
    mode = gr.Radio(list(MODE_LABELS), value=next(iter(MODE_LABELS)), label="mode")
    left = gr.Markdown()
    with gr.Row():
        caption = gr.Textbox(label="caption", interactive=False)
        first = gr.Image(label="first frame (the videos must continue it)", height=192, interactive=False)
    with gr.Row():
        videos = [gr.Video(label=str(i + 1), height=240, autoplay=False, loop=False, interactive=False)
                  for i in range(n)]
    radios = [gr.Radio([], label=c.replace("_", " "), interactive=False) for c in criteria]
    submit = gr.Button("submit votes", variant="primary", interactive=False)
    return StudyPage(mode, left, caption, first, videos, radios, submit, gr.State(None), gr.State(set()))


def next_item_view(study, store: VoteStore, page: StudyPage, mode_label: str, annotator: str) -> tuple:
    """The updates of `page.outputs` that show an annotator their next item in a mode, votes disabled."""
    m, n = MODE_LABELS[mode_label], len(page.videos)
    item = store.next_item(study, annotator, m)
    if item is None:
        return (None, set(), "All items are voted in this mode: thank you.", "", None,
                *[gr.update(value=None, visible=False) for _ in page.videos],
                *[gr.update(choices=[], value=None, interactive=False) for _ in page.radios],
                gr.update(interactive=False))
    slots = ["A", "B"] if m == "pairwise" else [str(i + 1) for i in range(len(item.videos))]
    choices = [*slots, *PAIRWISE_CHOICES[2:]] if m == "pairwise" else slots
    return ({"item": item.item, "mode": m, "videos": list(item.videos)}, set(),
            f"**{item.left}** item{'s' * (item.left != 1)} left in this mode. Play every video, then vote.",
            item.caption, str(study.frame_path(item.first_frame)),
            *[gr.update(value=str(study.video_path(v)), label=slots[i], visible=True) if i < len(item.videos)
              else gr.update(value=None, visible=False) for i, v in enumerate([*item.videos, *[None] * n][:n])],
            *[gr.update(choices=choices, value=None, interactive=False) for _ in page.radios],
            gr.update(interactive=False))


def played_view(i: int, state, seen: set, radios: int) -> tuple:
    """Video slot i has played to its end: the played set, and the answers and submit enabled once all have."""
    seen = seen | {i}
    ready = state is not None and len(seen) >= len(state["videos"])
    # enable once ready, never disable here: the page may apply these replies out of order (videos ending
    # together), and an earlier "not yet" applied last left the votes disabled; serve() disables them per item
    enable = gr.update(interactive=True) if ready else gr.update()
    return seen, *[enable for _ in range(radios)], enable


def store_votes(study, store: VoteStore, annotator: str, state, seen: set, choices: tuple) -> None:
    """One answer per criterion, each committed before this returns; a gr.Error says what is missing or refused."""
    if state is None or len(seen) < len(state["videos"]):
        raise gr.Error("play every video before voting")
    if any(c is None for c in choices):
        raise gr.Error("choose an answer for every criterion")
    pairwise = state["mode"] == "pairwise"   # pairwise answers are stored as they read; best of N as the slot
    for criterion, choice in zip(study.criteria, choices):
        value = choice if pairwise else chosen_slot(choice, state["mode"], first=1)  # the page numbers 1..N
        try:
            store.vote(study, annotator, state["item"], criterion, state["mode"], value,
                       videos=state["videos"], app_version=APP_VERSION)
        except ValueError as e:
            raise gr.Error(str(e)) from None


def study_tab(study, store: VoteStore | None):
    """Blind votes: an item's videos in a fresh order per annotator, votes enabled once every video has played."""
    if study is None or store is None:
        gr.Markdown("Voting needs annotators: start the app with `--users FILE` (`name:password` lines, stored "
                    "hashed; there is no default password); it then shows annotators this tab only. `--study DIR` "
                    "chooses another study than the shipped toy one (`python -m workbench study build`).")
        return None
    page = study_page(len(study.manifest["models"]), list(study.criteria))

    def serve(mode_label, request: gr.Request):
        return next_item_view(study, store, page, mode_label, request.username)

    def vote(request: gr.Request, state, seen, *choices):  # gradio injects the request into a leading parameter
        store_votes(study, store, request.username, state, seen, choices)
        gr.Info("votes stored")   # only after every vote is committed

    radios = len(page.radios)
    for i, v in enumerate(page.videos):  # api names: what gradio_client calls in bench/app.py's load test
        v.end(lambda state, seen, i=i: played_view(i, state, seen, radios), [page.shown, page.played],
              [page.played, *page.radios, page.submit], api_name=f"played_{i}", concurrency_id="played",
              concurrency_limit=1)  # one at a time: none is lost
    page.mode.change(serve, page.mode, page.outputs, api_name="next_item")
    page.submit.click(vote, [page.shown, page.played, *page.radios], None, api_name="vote").success(
        serve, page.mode, page.outputs)
    return serve, page.mode, page.outputs


# --- Results: evaluation tables, training curves, shipped tables, the user study --------------------------------

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

    def on_refresh():
        r = study_results(store.votes(study))
        if r.counted_votes == 0:
            return "No counted votes yet.", None, None, None, None, None, None
        text = (f"{r.counted_votes} votes counted; {r.excluded_votes} left out from {len(r.flagged)} annotator(s) "
                f"flagged by attention checks.")
        matrix = r.win_rates.get("frame_quality")
        evaluated = study.evaluated()   # the study's own models evaluated at their step counts, if they are
        versus_metric = plots.human_vs_metric(r.strengths, evaluated) if evaluated is not None else None
        return (text, plots.best_share_bars(r.best_share) if len(r.best_share) else None,
                plots.strength_intervals(r.strengths), versus_metric,
                None if matrix is None else matrix.round(3).reset_index(), r.agreement, r.attention)

    outputs = [summary, best, strengths, versus, wins, agree, annotators]
    refresh.click(on_refresh, None, outputs)
    return on_refresh, outputs


def results_tab(app: gr.Blocks, experiments: list[Path], study, store: VoteStore | None):
    """A metric against steps, the means over seeds and the VBench dimensions of an evaluation; one training curve
    of every run; a shipped table; the study's results. Returns the study results' refresh (or None)."""
    tables = [str(p) for p in find_eval_tables(*experiments)]
    runs = [str(p) for p in find_runs(*experiments)]
    shipped_tables = [str(p) for p in find_tables(*experiments)]

    def on_curves(key):
        having = {Path(r).name: r for r in runs if key in Run(r).metrics}
        return plots.training_curves(having, (key,), log_y=False) if having else None

    def on_results(path, metric):
        return plots.results_view(pd.read_csv(path), metric) if path else (None, None, None)

    table_path = gr.Dropdown(tables, value=tables[0] if tables else None, label="evaluation (results.csv)")
    metric = gr.Dropdown(metric_names(), value=HEADLINE, label="metric against steps")
    figure = gr.Plot()
    summary_table = gr.Dataframe(label="mean over seeds", interactive=False)
    vbench = gr.Plot(label="VBench-I2V dimensions per method")
    curve_key = gr.Dropdown(CURVE_KEYS, value=CURVE_KEYS[0], label="training curve of every run that logged it")
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
    return study_results_section(store, study)


# --- Runs: a run's config, curves, sheets and eval table; two configs' diff -------------------------------------

def on_run(path: str):
    """A run or model folder: its config as written, its loss and Win Diff curves, sample sheets, first eval table."""
    if not path:
        return "", None, [], None
    run = Run(path)
    logged = run.metrics.columns
    keys = tuple(k for k in RUN_CURVES if k in logged)
    curves = plots.training_curves({run.path.name: run.path}, keys, log_y=False) if keys else None
    evals = run.eval_tables()
    return run.config_text, curves, [str(p) for p in run.sheets], next(iter(evals.values())) if evals else None


def on_diff(a: str, b: str) -> str:
    """The unified diff of two runs' configs as written."""
    if not (a and b):
        return ""
    lines_a, lines_b = Run(a).config_text.splitlines(), Run(b).config_text.splitlines()
    return "\n".join(difflib.unified_diff(lines_a, lines_b, a, b, lineterm="")) or "(the same config)"


def runs_tab(app: gr.Blocks, experiments: list[Path]) -> None:
    """One run's config, curves, sheets and eval table; the diff of two runs' configs."""
    runs = [str(p) for p in find_runs(*experiments)]
    run_path = gr.Dropdown(runs, value=runs[0] if runs else None, label="run or model folder")
    config = gr.Code(language="yaml", label="config (YAML, as the run wrote it)")
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


# --- the page, and the command line -----------------------------------------------------------------------------

def build(experiments: list[Path], cache: Path, study=None, store: VoteStore | None = None, voting: bool = False
          ) -> gr.Blocks:
    """Annotators (voting) see the Study tab alone; reviewers see Compare, Study, Results and Runs."""
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}")
        if voting:  # annotators see the study only: the other tabs name methods and could replay a study clip
            with gr.Tab("Study"):
                served = study_tab(study, store)
            app.load(*served)
            return app
        with gr.Tab("Compare"):
            compare_tab(app, experiments, cache, study)
        with gr.Tab("Study"):
            study_tab(study, None)
        with gr.Tab("Results"):
            refreshed = results_tab(app, experiments, study, store)
        with gr.Tab("Runs"):
            runs_tab(app, experiments)
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
    media = [str(p) for p in study.media] if study else []
    allowed = media if voting else [str(cache), *media, *map(str, experiments)]  # annotators: the study's media only
    blocked = [str(votes), *([str(study.manifest_path)] if study else [])]
    build(experiments, cache, study, store, voting=voting).launch(
        server_name=args.host, server_port=args.port, share=False, css=CSS,
        auth=store.check_login if voting else None, allowed_paths=allowed, blocked_paths=blocked)


if __name__ == "__main__":
    main()

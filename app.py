"""The SwiftVideo workbench app: compare models side by side, run the blind user study, read results, browse runs.

    python app.py [--experiments experiments] [--study experiments/toy/study] [--users FILE]
                  [--votes runs/app-votes.sqlite | postgresql://...] [--cache runs/app-cache]
                  [--host 127.0.0.1] [--port 7860]

Layout and callbacks only, one function per tab; every computation and every file goes through `workbench`: compare
(the Compare tab), runs (run and model folders, evaluation tables), study (the study set, its votes and results) and
plots (figures). Metric names come from the metric table (workbench/eval/metrics.py), curve names from plots.CURVES.
The sampling stack (torch, the models) is imported when a tab first needs it, not at start.
Binds loopback unless --host says otherwise, never shares, and serves only the compare cache, the study's videos
and first frames, and the experiment folders; never the votes database or the study manifest.

With --users (lines `name:password`, stored hashed) the app is the annotators': a page under a neutral title with
the Study tab alone, a login (limited attempts per name and address, checked off the event loop) and the study's
media only (study_app.MediaGate: no other file, no uploads; each video fetch recorded). The server decides whether
a vote counts (`VoteStore.submit`: every shown video fetched by that annotator, their duration passed, since the
item was first served); a second submit of an item says the first answer stands. Protocol: an item voted in one mode is
not served to the same annotator in the other. Votes of many annotators run concurrently; the study results are
the reviewers' (Results tab), cached until a vote lands. `--votes` is an SQLite file or a PostgreSQL URL (several
app processes on one database).
"""
from __future__ import annotations

import difflib
import html
import random
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from workbench import plots
from workbench.cli import OneLineParser, one_line
from workbench.eval.metrics import HEADLINE, names as metric_names
from workbench.folders import find_eval_tables, find_models, find_runs, find_tables
from workbench.study import PAIRWISE_CHOICES, NotReady, VoteStore, load_study, open_store, study_results
from workbench.study.votes import chosen_slot, read_users

APP_VERSION = "app-2"
MODE_LABELS = {"best of N (the paper's protocol)": "best_of_n", "pairwise arena (A/B)": "pairwise"}  # -> votes.MODES

TITLE = "SwiftVideo workbench"      # the reviewers' app
STUDY_TITLE = "Video study"         # the annotators' app: a neutral title (the project's name is an entrant's)
VOTES_AT_ONCE = 32                  # annotators' serves and votes that run concurrently (each its own transaction)
DEFAULT_PICKS = ("teacher @ 8", "ccd @ 4", "swiftvideo @ 4")                # the Compare tab's first view
RUN_CURVES = (*plots.CURVES["training_curves"], *plots.CURVES["win_diff"])  # the Runs tab: losses and Win Diff
CURVE_KEYS = [key for keys in plots.CURVES.values() for key in keys]       # the Results tab: Win Diff first


def video_grid(real, shown: list) -> str:
    """Looping videos (compare.LabelledVideo) in one grid, each with its label and metrics below it."""
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

@dataclass
class Models:
    """The Compare tab's models, read when the tab first needs them: `workbench.compare` (torch, the models) is
    imported then, not when the app starts. One per app, kept for its lifetime."""
    experiments: list[Path]
    ready: tuple | None = None

    def __post_init__(self):
        self.lock = threading.Lock()

    def get(self) -> tuple:
        """(compare, loaded, models, options, test_size): the module, its Loaded, the model folders and choices."""
        with self.lock:
            if self.ready is None:
                from workbench import compare
                loaded = compare.Loaded()  # the configs and models this app has read, kept for its lifetime
                models = find_models(*self.experiments)
                test_size = loaded.config(next(iter(models.values()))).data.test_size if models else 1
                self.ready = (compare, loaded, models, compare.choices(models, loaded), test_size)
            return self.ready


def compare_tab(app: gr.Blocks, experiments: list[Path], cache: Path, study) -> None:
    """Toy-scale models sampled on demand from one test clip's first frame and noise; a study set's items labelled."""
    models = Models(experiments)

    def on_open():
        options = models.get()[3]
        return gr.update(choices=options, value=[c for c in options if c.endswith(DEFAULT_PICKS)])

    def on_compare(clip, picks, seed):
        compare, loaded, found, _, test_size = models.get()
        if clip is None or not 0 <= int(clip) < test_size:   # one message, the outputs cleared (no error badges)
            return f"**test clip {clip}**: out of range; the test set has clips 0 to {test_size - 1}.", "", None, \
                "", None, None
        try:
            info, real, shown, strip = compare.compare([compare.parse_choice(c, found, loaded) for c in picks],
                                                       int(clip), int(seed), cache, loaded)
        except ValueError as e:
            return f"**cannot compare**: {e}", "", None, "", None, None
        table = pd.DataFrame([{"video": s.label, **s.metrics} for s in shown]).round(3)
        return "", info["caption"], info["first_frame"], video_grid(real, shown), str(strip), table

    with gr.Row():
        clip = gr.Number(value=0, precision=0, label="test clip")  # no bounds here: on_compare says what is wrong
        pick_random = gr.Button("random clip")
        seed = gr.Number(value=0, precision=0, label="noise seed")
    picks = gr.CheckboxGroup([], label="models @ steps (same first frame and noise)")
    go = gr.Button("compare", variant="primary")
    status = gr.Markdown()
    with gr.Row():
        caption = gr.Textbox(label="caption", interactive=False)
        first = gr.Image(label="first frame", height=160, interactive=False)
    grid = gr.HTML()
    strip = gr.Image(label="every frame of every video, in rows", interactive=False)
    metrics = gr.Dataframe(label="oracle metrics of this clip (against its ground truth)", interactive=False)
    if study is not None:
        prerendered_section(app, study)
    shown = [status, caption, first, grid, strip, metrics]
    pick_random.click(lambda: random.randrange(models.get()[4]), outputs=clip)
    go.click(on_compare, [clip, picks, seed], shown)
    app.load(on_open, None, picks).then(on_compare, [clip, picks, seed], shown)


def prerendered_section(app: gr.Blocks, study) -> None:
    """Reviewers: the study set's items, each video labelled (Compare at any scale, where sampling is too slow)."""
    def on_item(item):
        if not item:
            return "", ""
        from workbench import compare
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

    @property
    def outputs(self) -> list:
        return [self.shown, self.left, self.caption, self.first, *self.videos, *self.radios, self.submit]


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
    return StudyPage(mode, left, caption, first, videos, radios, submit, gr.State(None))


def next_item_view(study, store: VoteStore, page: StudyPage, mode_label: str, annotator: str) -> tuple:
    """The updates of `page.outputs` that show an annotator their next item in a mode. The answers are open at once:
    the server, not the page, decides when a vote may count (a vote before every video was loaded and played is
    refused with the reason), so the page spends no request on telling the server a video ended."""
    m, n = MODE_LABELS[mode_label], len(page.videos)
    item = store.next_item(study, annotator, m)
    if item is None:
        return (None, "All items are voted in this mode: thank you.", "", None,
                *[gr.update(value=None, visible=False) for _ in page.videos],
                *[gr.update(choices=[], value=None, interactive=False) for _ in page.radios],
                gr.update(interactive=False))
    slots = ["A", "B"] if m == "pairwise" else [str(i + 1) for i in range(len(item.videos))]
    choices = [*slots, *PAIRWISE_CHOICES[2:]] if m == "pairwise" else slots
    return ({"item": item.item, "mode": m, "videos": list(item.videos)},
            f"**{item.left}** item{'s' * (item.left != 1)} left in this mode. Play every video to its end, then vote.",
            item.caption, str(study.frame_path(item.first_frame)),
            *[gr.update(value=str(study.video_path(v)), label=slots[i], visible=True) if i < len(item.videos)
              else gr.update(value=None, visible=False) for i, v in enumerate([*item.videos, *[None] * n][:n])],
            *[gr.update(choices=choices, value=None, interactive=True) for _ in page.radios],
            gr.update(interactive=True))


def submit_votes(study, store: VoteStore, annotator: str, state, choices: tuple) -> str:
    """The item's answers, one per criterion, stored in one transaction by the store, which decides whether the
    vote may count (every shown video fetched by this annotator, their duration passed since serving); what to tell
    the annotator. A refusal raises gr.Error with the store's reason, and nothing is stored."""
    if state is None:
        raise gr.Error("no item is shown: choose a mode")
    if any(c is None for c in choices):
        raise gr.Error("choose an answer for every criterion")
    pairwise = state["mode"] == "pairwise"   # pairwise answers are stored as they read; best of N as the slot
    answers = {criterion: choice if pairwise else chosen_slot(choice, state["mode"], first=1)  # the page: 1..N
               for criterion, choice in zip(study.criteria, choices)}
    try:
        done = store.submit(study, annotator, state["item"], state["mode"], answers, state["videos"],
                            app_version=APP_VERSION)
    except NotReady as e:
        raise gr.Error(f"not stored: {e}. Play every video to its end, then submit again.") from None
    except ValueError as e:
        raise gr.Error(str(e)) from None
    if done.new:
        return "votes stored"
    return (f"this item was already voted (at {done.first_voted_at:%H:%M:%S} UTC): the first answer stands, "
            f"nothing was changed")


def study_tab(study, store: VoteStore | None):
    """Blind votes: an item's videos in a fresh order per annotator; a vote counts once the store's play gate says so
    (every shown video fetched by this annotator's browser, their length passed since the item was first served).
    Api names: what bench/app.py calls."""
    if study is None or store is None:
        gr.Markdown("Voting needs annotators: start the app with `--users FILE` (`name:password` lines, stored "
                    "hashed; there is no default password); it then shows annotators this tab only. `--study DIR` "
                    "chooses another study than the shipped toy one (`python -m workbench study build`).")
        return None
    page = study_page(len(study.manifest["models"]), list(study.criteria))

    def serve(mode_label, request: gr.Request):
        return next_item_view(study, store, page, mode_label, request.username)

    def vote(request: gr.Request, state, *choices):  # gradio injects the request into a leading parameter
        gr.Info(submit_votes(study, store, request.username, state, choices))  # only after the commit

    page.mode.change(serve, page.mode, page.outputs, api_name="next_item", concurrency_id="serve",
                     concurrency_limit=VOTES_AT_ONCE)
    page.submit.click(vote, [page.shown, *page.radios], None, api_name="vote", concurrency_id="vote",
                      concurrency_limit=VOTES_AT_ONCE).success(serve, page.mode, page.outputs,
                                                               concurrency_id="serve", concurrency_limit=VOTES_AT_ONCE)
    return serve, page.mode, page.outputs


# --- Results: evaluation tables, training curves, shipped tables, the user study --------------------------------

class CachedResults:
    """The study results (a 200-round bootstrap: seconds) computed once per revision of the votes (the store's
    `revision` changes when a vote lands), one computation at a time; reviewers' page loads read the cache."""

    def __init__(self, store: VoteStore, study):
        self.store, self.study = store, study
        self.lock = threading.Lock()
        self.revision, self.results = None, None

    def get(self):
        with self.lock:
            revision = self.store.revision(self.study)  # read first: a vote landing meanwhile only recomputes later
            if revision != self.revision:
                self.results, self.revision = study_results(self.store.votes(self.study)), revision
            return self.results


def named(table: pd.DataFrame | None, empty: str) -> pd.DataFrame | None:
    """A table whose columns all have names; with no rows, one row saying why (not a table of blank headers)."""
    if table is None:
        return None
    if table.empty:
        return pd.DataFrame({table.columns[0] if len(table.columns) else "note": [empty]})
    return table.rename(columns={c: f"column {i + 1}" for i, c in enumerate(table.columns) if not str(c).strip()})


def study_results_view(results: CachedResults, study) -> tuple:
    """The study section's outputs from the cached results."""
    r = results.get()
    if r.counted_votes == 0:
        return "No counted votes yet.", None, None, None, None, None, None
    text = (f"{r.counted_votes} votes counted; {r.excluded_votes} left out from {len(r.flagged)} annotator(s) "
            f"flagged by attention checks.")
    matrix = r.win_rates.get("frame_quality")
    evaluated = study.evaluated()   # the study's own models evaluated at their step counts, if they are
    versus_metric = plots.human_vs_metric(r.strengths, evaluated) if evaluated is not None else None
    wins = None if matrix is None else matrix.round(3).rename_axis("row over column").reset_index()
    return (text, plots.best_share_bars(r.best_share) if len(r.best_share) else None,
            plots.strength_intervals(r.strengths), versus_metric, wins,
            named(r.agreement.round(3), "no item has judgements from two annotators yet"),
            named(r.attention, "no attention check voted yet"))


def study_results_section(store: VoteStore | None, study):
    """Reviewers: share chosen best, Bradley-Terry strengths with intervals, win rates, attention, agreement."""
    if store is None or study is None:
        return None
    results = CachedResults(store, study)
    with gr.Accordion("the user study (votes of flagged annotators left out)", open=True):
        summary = gr.Markdown()
        with gr.Row():
            best = gr.Plot()
            strengths = gr.Plot()
        versus = gr.Plot()
        wins = gr.Dataframe(label="win rate of row over column (ties count half), frame quality", interactive=False)
        agree = gr.Dataframe(label="inter-annotator agreement", interactive=False)
        annotators = gr.Dataframe(label="annotators: attention checks seen, failed, flagged", interactive=False)
        refresh = gr.Button("refresh study results")
    outputs = [summary, best, strengths, versus, wins, agree, annotators]
    on_refresh = lambda: study_results_view(results, study)  # noqa: E731
    refresh.click(on_refresh, None, outputs, concurrency_id="study_results", concurrency_limit=1)
    return on_refresh, outputs


def results_tab(app: gr.Blocks, experiments: list[Path], study, store: VoteStore | None):
    """A metric against steps, the means over seeds and the VBench dimensions of an evaluation; one training curve
    of every run; a shipped table; the study's results; each section foldable. Returns the study results' refresh
    (or None)."""
    tables = [str(p) for p in find_eval_tables(*experiments)]
    runs = [str(p) for p in find_runs(*experiments)]
    shipped_tables = [str(p) for p in find_tables(*experiments)]

    def on_curves(key):
        from workbench.runs import Run  # torch: imported when a curve is drawn
        having = {Path(r).name: r for r in runs if key in Run(r).metrics}
        return plots.training_curves(having, (key,), log_y=False) if having else None

    def on_results(path, metric):
        return plots.results_view(pd.read_csv(path), metric) if path else (None, None, None)

    with gr.Accordion("an evaluation: a metric against steps, the means over seeds, VBench dimensions", open=True):
        table_path = gr.Dropdown(tables, value=tables[0] if tables else None, label="evaluation (results.csv)")
        metric = gr.Dropdown(metric_names(), value=HEADLINE, label="metric against steps")
        figure = gr.Plot()
        summary_table = gr.Dataframe(label="mean over seeds", interactive=False)
        vbench = gr.Plot(label="VBench-I2V dimensions per method")
    with gr.Accordion("training curves of every run", open=True):
        curve_key = gr.Dropdown(CURVE_KEYS, value=CURVE_KEYS[0], label="training curve of every run that logged it")
        curve = gr.Plot()
    curve_key.change(on_curves, curve_key, curve)
    app.load(on_curves, curve_key, curve)
    for c in (table_path, metric):
        c.change(on_results, [table_path, metric], [figure, summary_table, vbench])
    app.load(on_results, [table_path, metric], [figure, summary_table, vbench])
    with gr.Accordion("a shipped table", open=True):
        shipped = gr.Dropdown(shipped_tables, value=next((t for t in shipped_tables if "ablations" in t), None),
                              label="a shipped table (Table 1 and Table 2 layouts: evaluations and ablations)")
        shipped_md = gr.Markdown()
    show_table = lambda p: Path(p).read_text() if p else ""  # noqa: E731
    shipped.change(show_table, shipped, shipped_md)
    app.load(show_table, shipped, shipped_md)
    return study_results_section(store, study)


# --- Runs: a run's config, curves, sheets and eval table; two configs' diff -------------------------------------

NO_EVAL = "This run has no eval table (`python -m workbench eval RUN --out RUN/eval` writes one)."


def on_run(path: str):
    """A run or model folder: its config as written, its loss and Win Diff curves, sample sheets, first eval table
    (or a line saying it has none)."""
    if not path:
        return "", None, [], gr.update(value=None, visible=False), ""
    from workbench.runs import Run  # torch: imported when the Runs tab first shows a run
    run = Run(path)
    logged = run.metrics.columns
    keys = tuple(k for k in RUN_CURVES if k in logged)
    curves = plots.training_curves({run.path.name: run.path}, keys, log_y=False) if keys else None
    evals = run.eval_tables()
    table = gr.update(value=next(iter(evals.values())), visible=True) if evals else gr.update(value=None,
                                                                                           visible=False)
    return run.config_text, curves, [str(p) for p in run.sheets], table, "" if evals else NO_EVAL


def on_diff(a: str, b: str) -> str:
    """The unified diff of two runs' configs as written."""
    if not (a and b):
        return ""
    from workbench.runs import Run
    lines_a, lines_b = Run(a).config_text.splitlines(), Run(b).config_text.splitlines()
    return "\n".join(difflib.unified_diff(lines_a, lines_b, a, b, lineterm="")) or "(the same config)"


def runs_tab(app: gr.Blocks, experiments: list[Path]) -> None:
    """One run's config, curves, sheets and eval table; the diff of two runs' configs."""
    runs = [str(p) for p in find_runs(*experiments)]
    run_path = gr.Dropdown(runs, value=runs[0] if runs else None, label="run or model folder")
    config = gr.Code(language="yaml", label="config (YAML, as the run wrote it)")
    curves = gr.Plot(label="training curves")
    sheets = gr.Gallery(label="sample sheets", columns=2, height="auto")
    eval_table = gr.Dataframe(label="eval table", interactive=False, visible=False)
    eval_note = gr.Markdown()
    shown = [config, curves, sheets, eval_table, eval_note]
    run_path.change(on_run, run_path, shown)
    with gr.Row():
        diff_a = gr.Dropdown(runs, label="config A")
        diff_b = gr.Dropdown(runs, label="config B")
    diff = gr.Code(language="markdown", label="diff of the two configs")
    for c in (diff_a, diff_b):
        c.change(on_diff, [diff_a, diff_b], diff)
    app.load(on_run, run_path, shown)


# --- the page, and the command line -----------------------------------------------------------------------------

def build(experiments: list[Path], cache: Path, study=None, store: VoteStore | None = None, voting: bool = False
          ) -> gr.Blocks:
    """Annotators (voting) see the Study tab alone, under a neutral title; reviewers see Compare, Study, Results
    and Runs."""
    title = STUDY_TITLE if voting else TITLE
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}")
        if voting:  # annotators see the study only: the other tabs name methods and could replay a study clip
            with gr.Tab("Study"):
                serve, mode, outputs = study_tab(study, store)
            app.load(serve, mode, outputs, concurrency_id="serve", concurrency_limit=VOTES_AT_ONCE)
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
            app.load(refreshed[0], None, refreshed[1], concurrency_id="study_results", concurrency_limit=1)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = OneLineParser(prog="app.py", description=TITLE)
    ap.add_argument("--experiments", nargs="+", default=["experiments"], help="folders of model and run folders")
    ap.add_argument("--cache", default="runs/app-cache", help="where compared clips are written")
    ap.add_argument("--study", default="experiments/toy/study", help="a study folder (python -m workbench study build)")
    ap.add_argument("--users", help="annotators, `name:password` per line (stored hashed); enables login and votes")
    ap.add_argument("--votes", default="runs/app-votes.sqlite", help="the votes database: an SQLite file (never served) or a postgresql:// URL")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    try:
        launch(args)
    except (ValueError, OSError) as e:  # a bad study folder, users file or path: one line, exit 2
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def checked_votes(votes: str) -> tuple[str, list[str]]:
    """--votes as the store takes it (an SQLite file, resolved; or a postgresql:// URL) and the files never served."""
    if "://" in votes:
        return votes, []
    path = Path(votes).resolve()
    if path.is_dir():
        raise IsADirectoryError(f"--votes {votes}: is a folder; expected the votes database file")
    return str(path), [str(path)]


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
    cache = Path(args.cache).resolve()
    if cache.exists() and not cache.is_dir():
        raise NotADirectoryError(f"--cache {args.cache}: is a file; expected a folder for the compared clips")
    votes, blocked = checked_votes(args.votes)
    experiments = [Path(e).resolve() for e in args.experiments]
    voting = users is not None
    store = None
    if study is not None:
        if blocked:
            Path(votes).parent.mkdir(parents=True, exist_ok=True)
        store = open_store(votes)
    for name, password in (users or {}).items():
        store.add_annotator(name, password)
    cache.mkdir(parents=True, exist_ok=True)
    media = [str(p) for p in study.media] if study else []
    allowed = media if voting else [str(cache), *media, *map(str, experiments)]  # annotators: the study's media only
    blocked += [str(study.manifest_path)] if study else []
    app = build(experiments, cache, study, store, voting=voting)
    served = dict(auth=annotator_login(store), app_kwargs=annotator_server(study, store)) if voting else {}
    app.launch(server_name=args.host, server_port=args.port, share=False, css=CSS, allowed_paths=allowed,
               blocked_paths=blocked, **served)


def annotator_login(store: VoteStore):
    """gradio's auth for annotators: the store's limited, scrypt check, run off the event loop (study_app.login)."""
    import study_app
    return study_app.login(store)


def annotator_server(study, store: VoteStore) -> dict:
    """gradio's app settings for annotators: study_app.MediaGate in front of its routes (the study's media only,
    each video fetch recorded, no uploads)."""
    import study_app
    from gradio.utils import get_upload_folder
    from starlette.middleware import Middleware
    gate = Middleware(study_app.MediaGate, study=study, store=store, cache=[get_upload_folder()])
    return {"middleware": [gate]}


if __name__ == "__main__":
    main()

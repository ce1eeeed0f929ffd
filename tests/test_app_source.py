"""app.py as source (no browser): one function per tab over the read APIs; it imports no command line, reads no
config file and spells no folder layout itself. (Its function lengths: tests/test_layers.py.)"""
import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"
TREE = ast.parse(APP.read_text())


def _joined_names() -> list[str]:
    """The names joined onto a path (`folder / "videos"`) and the patterns searched for (`rglob("*table.md")`)."""
    joins = [side.value for n in ast.walk(TREE) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
             for side in (n.left, n.right) if isinstance(side, ast.Constant) and isinstance(side.value, str)]
    globs = [n.args[0].value for n in ast.walk(TREE) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in ("glob", "rglob") and n.args and isinstance(n.args[0], ast.Constant)]
    return joins + globs


def test_the_app_imports_the_library_not_the_command_line():
    imported = {n.module for n in ast.walk(TREE) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(TREE) if isinstance(n, ast.Import) for a in n.names}
    assert "workbench.__main__" not in imported and "workbench.cli" in imported


def test_the_app_reads_no_config_file_and_spells_no_study_layout():
    """A run's config text comes from runs.Run, the study's media, manifest and evaluation from its Study."""
    text = APP.read_text()
    assert "config.yaml" not in text and ".read_text()" in text            # a shipped table is read as chosen
    assert _joined_names() == [] and "study.path" not in text


def test_one_function_per_tab():
    build = next(n for n in TREE.body if isinstance(n, ast.FunctionDef) and n.name == "build")
    called = {n.func.id for n in ast.walk(build) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"compare_tab", "study_tab", "results_tab", "runs_tab"} <= called


# --- the parts of the app that need no browser ----------------------------------------------------------------------

STUDY_APP = APP.with_name("study_app.py")


def _app():
    """This checkout's app.py as a module (gradio imported, the sampling stack not)."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("workbench_app", APP)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_annotators_server_module_is_short_functions_too():
    from tests.test_layers import long_functions
    assert long_functions(STUDY_APP) == []


def test_the_app_builds_its_pages_without_the_sampling_stack(tmp_path):
    """Start-up: torch and the models are imported when a tab first needs them, not to build the page."""
    import subprocess
    import sys
    code = ("import sys, importlib.util; sys.path.insert(0, '.'); "
            "spec = importlib.util.spec_from_file_location('app', 'app.py'); "
            "app = sys.modules['app'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(app); from pathlib import Path; from workbench.study import load_study, open_store; "
            f"tmp = Path({str(tmp_path)!r}); study = load_study('experiments/toy/study'); "
            "store = open_store(tmp / 'votes.sqlite'); app.build([Path('experiments')], tmp / 'cache', study, store); "
            "app.build([Path('experiments')], tmp / 'cache', study, store, voting=True); "
            "print(sorted(m for m in ('torch', 'diffusers', 'workbench.compare', 'workbench.runs') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=APP.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_the_login_check_runs_off_the_event_loop_with_the_request_address():
    import inspect
    import threading

    import anyio

    import study_app

    class Store:
        def check_login(self, username, password, address=None):
            self.call = (username, password, address, threading.get_ident())
            return password == "right"

    store, check = Store(), study_app.login(Store())
    check = study_app.login(store)
    assert inspect.iscoroutinefunction(check)   # gradio awaits it instead of calling it inside the event loop

    async def attempt(password):
        study_app.ADDRESS.set("10.0.0.7")        # what MediaGate sets from the request
        return await check("ann", password), threading.get_ident()

    ok, loop_thread = anyio.run(attempt, "right")
    assert ok and store.call[:3] == ("ann", "right", "10.0.0.7") and store.call[3] != loop_thread
    assert anyio.run(attempt, "wrong")[0] is False


def test_the_media_gate_names_only_the_study_media_and_its_cached_copies(tmp_path):
    import study_app
    from workbench.study import load_study
    study = load_study(APP.parent / "experiments/toy/study")
    cache = tmp_path / "gradio"
    gate = study_app.MediaGate(None, study, None, [cache])
    video = next(iter(gate.videos))
    original = study.video_path(video)
    (cache / "abc").mkdir(parents=True)
    (cache / "abc" / video).write_bytes(original.read_bytes())                   # gradio's copy
    (cache / "def").mkdir()
    (cache / "def" / video).write_bytes(b"other bytes")                          # a study name, other content
    (cache / "def" / "strip-1.png").write_bytes(b"png")                          # a reviewer's labelled strip
    assert gate.media_name(str(original.resolve())) == video
    assert gate.media_name(str(cache / "abc" / video)) == video
    assert gate.media_name(str(cache / "def" / video)) is None
    assert gate.media_name(str(cache / "def" / "strip-1.png")) is None
    assert gate.media_name(str(study.manifest_path)) is None
    assert gate.media_name(f"{original.parent}/../{original.parent.name}/{video}") == video   # spelled otherwise


def test_the_study_results_are_computed_once_per_revision_of_the_votes(monkeypatch):
    app = _app()
    computed = []
    monkeypatch.setattr(app, "study_results", lambda votes: computed.append(votes) or f"results of {votes}")

    class Store:
        revision_now = 1

        def revision(self, study):
            return self.revision_now

        def votes(self, study):
            return f"votes at {self.revision_now}"

    store = Store()
    cached = app.CachedResults(store, "study")
    assert cached.get() == cached.get() == "results of votes at 1" and len(computed) == 1  # page loads: cached
    store.revision_now = 2                                                                # a vote landed
    assert cached.get() == "results of votes at 2" and len(computed) == 2


def test_tables_have_named_headers_and_a_run_without_an_eval_table_says_so():
    import pandas as pd
    app = _app()
    empty = pd.DataFrame(columns=["criterion", "mode", "agreement"])
    assert list(app.named(empty, "none yet").columns) == ["criterion"]
    assert list(app.named(pd.DataFrame({"": [1], "b": [2]}), "-").columns) == ["column 1", "b"]
    config, curves, sheets, table, note = app.on_run(str(APP.parent / "experiments/toy/baselines/cdm"))
    assert note == app.NO_EVAL and table["visible"] is False and curves is not None
    # baselines/cdm logs its loss on every other row: the curve keeps only the logged points, so its line draws
    line = curves.data[0]
    assert len(line.x) == 60 and not pd.isna(list(line.y)).any()

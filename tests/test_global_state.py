"""No hidden global state (issue 34, part 6) and one owner for small policies (part 7): importing plots changes no
plotly setting (notebooks opt in); shipped artifacts are found through `workbench.shipped`, which $WORKBENCH_HOME
overrides (an installed package, away from the repository, still finds them); the app owns the compare caches;
one rule decodes a vote's choice to a slot and one rule enlarges tiny clips."""
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import workbench
from workbench import shipped
from workbench.data.io import VIEW_PX, read_frames, view_scale
from workbench.eval.fvd import TOY_AE_WEIGHTS, TOY_FVD_WEIGHTS
from workbench.study.votes import chosen_slot

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"


def _python(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PLOTLY_RENDERER", "WORKBENCH_HOME", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**base, **env}, capture_output=True, text=True,
                          timeout=300)


# plotly's renderer: opt in, never on import
def test_importing_plots_changes_no_plotly_setting_and_notebooks_opt_in(monkeypatch):
    import plotly.io as pio

    import workbench.plots as plots
    monkeypatch.setattr(pio.renderers, "default", "json")               # put back after the test
    importlib.reload(plots)                                             # what an import runs
    assert pio.renderers.default == "json"
    plots.notebook_renderer()
    assert pio.renderers.default == "plotly_mimetype+notebook"  # mimetype for JupyterLab + HTML that nbconvert keeps


def test_every_notebook_opts_in_to_the_renderer_before_its_first_figure():
    """In a Jupyter kernel plotly's own default is the mimetype alone, which `nbconvert --to html` drops
    (tests/test_notebooks.py counts the figures in the HTML): the first cell after the parameters opts in."""
    for f in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(f.read_text())["cells"] if c["cell_type"] == "code"]
        first = next(c for c in cells if "parameters" not in c["metadata"].get("tags", []))
        assert re.search(r"^notebook_renderer\(\)", "".join(first["source"]), re.M), f"{f.name}: no opt-in"


# shipped artifacts: one function, overridable
def test_shipped_paths_default_to_the_repository_and_follow_workbench_home(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_HOME", raising=False)
    assert shipped() == workbench.ROOT and shipped(TOY_FVD_WEIGHTS) == ROOT / "experiments/toy/fvd/toy_fvd.safetensors"
    home = tmp_path / "home"
    (home / "experiments/toy").mkdir(parents=True)
    shutil.copytree(ROOT / "experiments/toy/fvd", home / "experiments/toy/fvd")
    (home / "experiments/toy/teacher").symlink_to(ROOT / "experiments/toy/teacher")
    monkeypatch.setenv("WORKBENCH_HOME", str(home))                     # read at call time, not at import
    assert shipped() == home.resolve() and shipped("experiments/toy") == home.resolve() / "experiments/toy"

    from workbench.eval.fvd import ToyFVDExtractor, load_extractor
    assert load_extractor("toy").path == home.resolve() / TOY_FVD_WEIGHTS
    with pytest.raises(FileNotFoundError, match=re.escape(str(home.resolve() / TOY_AE_WEIGHTS))):
        load_extractor("toy-ae")                                         # not copied: named, not read elsewhere
    assert ToyFVDExtractor().weight_hash == ToyFVDExtractor(ROOT / TOY_FVD_WEIGHTS).weight_hash

    from workbench.study.build import _shown_path, parse_model_spec
    spec = parse_model_spec("teacher@8")                                 # a short name: the shipped toy model
    assert spec.folder == home.resolve() / "experiments/toy/teacher" and (spec.name, spec.steps) == ("teacher", 8)
    assert _shown_path(home / "experiments/toy/fvd") == "experiments/toy/fvd"


def test_an_installed_package_away_from_the_repository_reads_shipped_weights_from_workbench_home(tmp_path):
    """The package copied elsewhere (as a non-editable install puts it) finds no shipped weights on its own, says
    where it looked and what to set, and finds them once WORKBENCH_HOME names a folder that holds `experiments/`."""
    site = tmp_path / "site-packages"
    shutil.copytree(PACKAGE, site / "workbench", ignore=shutil.ignore_patterns("__pycache__"))
    r = _python("import os, workbench; from workbench.eval.fvd import load_extractor\n"
                f"assert workbench.__file__.startswith({str(site)!r}), workbench.__file__\n"
                "try:\n    load_extractor('toy')\n"
                "except FileNotFoundError as e:\n    print('missing', e)\n"
                f"os.environ['WORKBENCH_HOME'] = {str(ROOT)!r}\n"
                "print('loaded', load_extractor('toy').path)\n", cwd=tmp_path, PYTHONPATH=str(site))
    assert r.returncode == 0, r.stderr[-2000:]
    missing, loaded = r.stdout.strip().splitlines()
    assert missing.startswith(f"missing {site / TOY_FVD_WEIGHTS}: ") and "$WORKBENCH_HOME" in missing
    assert loaded == f"loaded {ROOT / TOY_FVD_WEIGHTS}"


def test_only_workbench_init_knows_where_the_repository_is():
    """Shipped paths go through `workbench.shipped`: no other module names `ROOT` or climbs out of the package."""
    offenders = set()
    for f in [*PACKAGE.rglob("*.py"), ROOT / "app.py", ROOT / "study_app.py"]:
        name = f.relative_to(ROOT).as_posix()
        if name != "workbench/__init__.py" and re.search(r"\bROOT\b|__file__\)\.resolve\(\)\.parents\[",
                                                         f.read_text()):
            offenders.add(name)
    assert not offenders, sorted(offenders)


# compare's caches: owned by whoever calls it (the app)
def test_compare_keeps_no_module_level_cache_and_a_loaded_reads_each_model_once(tmp_path, monkeypatch):
    from workbench import compare
    assert not [n for n, v in vars(compare).items() if hasattr(v, "cache_info")]
    reads = {"config": 0, "model": 0}

    def counting(kind, real):
        def read(*a, **k):
            reads[kind] += 1
            return real(*a, **k)
        return read

    monkeypatch.setattr(compare, "load_config", counting("config", compare.load_config))
    monkeypatch.setattr(compare, "load_model", counting("model", compare.load_model))
    models = {name: ROOT / "experiments/toy" / name for name in ("teacher", "ccd")}
    loaded = compare.Loaded()
    options = compare.choices(models, loaded)
    assert "teacher @ 8" in options and "ccd @ 4" in options and reads["config"] == 2   # once per model
    picks = [compare.parse_choice(c, models, loaded) for c in ("teacher @ 2", "ccd @ 1")]
    info, real, shown, _ = compare.compare(picks, 3, 0, tmp_path / "cache", loaded)
    compare.compare(picks, 4, 0, tmp_path / "cache", loaded)
    assert reads == {"config": 2, "model": 2}                            # kept by the caller's Loaded
    compare.compare(picks, 3, 0, tmp_path / "cache")                     # none given: read afresh for this call
    assert reads["model"] == 4
    size = VIEW_PX // 24 * 24                                            # the toy's 24 px, enlarged by the one rule
    assert read_frames(shown[0].video).shape[1:3] == (size, size) == info["first_frame"].shape[:2]


def test_the_app_makes_its_own_loaded():
    text = (ROOT / "app.py").read_text()
    assert "compare.Loaded()" in text and "cached_" not in text


# one rule each
@pytest.mark.parametrize("H, W, scale", [(24, 24, 8), (16, 16, 12), (32, 32, 6), (25, 25, 8), (15, 15, 14),
                                         (24, 40, 8), (480, 832, 1), (192, 192, 1), (100, 100, 2)])
def test_tiny_clips_are_enlarged_to_about_192_pixels_with_even_sides(H, W, scale):
    assert view_scale(H, W) == scale
    assert min(H, W) * scale >= min(VIEW_PX, min(H, W)) and (H * scale) % 2 == 0 and (W * scale) % 2 == 0


def test_one_function_decodes_a_choice_to_a_slot():
    assert [chosen_slot(c, "best_of_n") for c in ("0", "3", 2)] == [0, 3, 2]           # as stored
    assert [chosen_slot(c, "best_of_n", first=1) for c in ("1", "4")] == [0, 3]        # as the page numbers them
    assert [chosen_slot(c, "pairwise") for c in ("A", "B", "tie", "both_bad")] == [0, 1, None, None]
    for f in [*(PACKAGE / "study").glob("*.py"), ROOT / "app.py"]:                     # no second decoder
        assert f.name == "votes.py" or not re.search(r'"A": 0\b|int\(choice\)', f.read_text()), f

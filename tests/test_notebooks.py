"""Every notebook runs top to bottom with tiny parameters (papermill), from a clean kernel."""
import os
from pathlib import Path

import nbformat
import papermill
import pytest
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # paths relative to notebooks/, the working directory Jupyter gives a notebook
    "01_teacher.ipynb": dict(config="../experiments/micro/teacher.yaml", train_steps=4, batch_size=4,
                             eval_clips=2, steps_list=[1, 2]),
    "02_ccd.ipynb": dict(config="../experiments/micro/ccd.yaml", train_steps=2, batch_size=2, eval_clips=2,
                         student_steps=[1], teacher_steps=[1]),
    "03_distribution_alignment.ipynb": dict(config="../experiments/micro/da.yaml", train_steps=4, batch_size=2,
                                            eval_clips=2, steps_list=[1]),
    "04_trajectory_alignment.ipynb": dict(config="../experiments/micro/dpo.yaml", da_model="../experiments/toy/da",
                                          num_pairs=4, win_steps=2, lose_steps=1, lambda_rf_sweep=[0.0, 2.0],
                                          train_steps=2, batch_size=2, eval_clips=2, steps_list=[1]),
    "05_baselines.ipynb": dict(steps_list=[1], eval_clips=2, metrics=["fvd", "background_mae"]),
    "06_evaluation.ipynb": dict(eval_clips=3, steps_list=[1, 2], seeds=[0, 1], cache=""),
}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_runs_and_exports_to_html_with_every_figure(name, tmp_path, monkeypatch):
    """Runs from notebooks/ (Jupyter's working directory), then `nbconvert --to html`: every plotly figure and image
    the notebook shows is in the HTML (plotly.js embedded once), and progress is one output per loop."""
    assert name in TINY, f"add tiny CI parameters for {name} to tests/test_notebooks.py"
    params = {**TINY[name], "out": str(tmp_path / "run")}
    # the kernel imports this checkout's workbench, not whichever one is installed (an editable install elsewhere)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    executed = tmp_path / name
    papermill.execute_notebook(str(ROOT / "notebooks" / name), str(executed), parameters=params,
                               cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, "the notebook shows no figure"
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert html.count('class="plotly-graph-div"') == len(figures)
    assert html.count("data:image/png;base64") >= len(images)
    assert "not able to be represented" not in html and "TqdmWarning" not in html
    text_bars = [o for o in outputs if o.output_type == "stream" and "it/s]" in o.text]
    assert not text_bars, "progress drawn as text (one stored output per update): is ipywidgets installed?"
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # one per loop


def test_notebooks_are_committed_without_outputs():
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert '"output_type"' not in nb.read_text(), f"{nb.name}: strip outputs before committing"

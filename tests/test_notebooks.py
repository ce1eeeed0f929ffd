"""Every notebook runs top to bottom with tiny parameters (papermill), from a clean kernel."""
from pathlib import Path

import papermill
import pytest

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
    "06_evaluation.ipynb": dict(eval_clips=3, steps_list=[1, 2], seeds=[0, 1], cache=""),
}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_runs(name, tmp_path):
    assert name in TINY, f"add tiny CI parameters for {name} to tests/test_notebooks.py"
    params = {**TINY[name], "out": str(tmp_path / "run")}
    papermill.execute_notebook(str(ROOT / "notebooks" / name), str(tmp_path / name), parameters=params,
                               cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)


def test_notebooks_are_committed_without_outputs():
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert '"output_type"' not in nb.read_text(), f"{nb.name}: strip outputs before committing"

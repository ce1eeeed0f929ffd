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

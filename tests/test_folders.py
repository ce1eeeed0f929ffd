"""workbench/folders.py is the one module that spells the names of the files and folders in run, checkpoint and
model folders: every other module (and the app) reaches them through it."""
import ast
from pathlib import Path

import workbench

LAYOUT = ("checkpoints", "state.json", "config.yaml", "metrics.jsonl", "model.safetensors", "export.json")
PACKAGE = Path(workbench.__file__).parent


def spelled(path: Path) -> list[str]:
    """Layout names used as paths in `path`'s string constants: a constant that is one (`run / "config.yaml"`,
    `rglob("model.safetensors")`) or joins one with a slash. Prose (docstrings, help and error messages) may name
    them."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{path.name}:{node.lineno}: {name}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            for name in LAYOUT if _as_path(node.value, name)]


def _as_path(text: str, name: str) -> bool:
    return text == name or text.endswith("/" + name) or text.startswith(name + "/") or f"/{name}/" in text


def test_only_folders_spells_the_layout():
    sources = [*PACKAGE.rglob("*.py"), PACKAGE.parent / "app.py", PACKAGE.parent / "study_app.py"]
    found = [hit for f in sources if f.name != "folders.py" or f.parent != PACKAGE for hit in spelled(f)]
    assert not found, "\n".join(found)


def test_the_check_sees_a_spelled_name(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text('"""Reads config.yaml."""\ndef f(run):\n    "A docstring: state.json."\n    print("no config.yaml")\n'
                 '    return run / "config.yaml", f"{run}/checkpoints/step-1"\n')
    assert spelled(f) == ["bad.py:5: config.yaml", "bad.py:5: checkpoints"]

"""No method imports another: a file in workbench/methods/ imports `base`, `parts` and the layers below
(tests/test_layers.py), never a sibling method nor the package (whose __init__ imports every file); and every
method file registers what it defines, so adding one is adding the file."""
import ast
from pathlib import Path

import workbench.methods
from workbench.methods import METHODS

PACKAGE = Path(workbench.methods.__file__).parent
SHARED = {"base", "parts"}                           # what every method may import
MODULES = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}


def package_imports(path: Path) -> set[str]:
    """The workbench.methods modules `path` imports, at the top or inside a function, by their names in the package
    ("__init__" for the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                            # from . import x, from .x import y: inside workbench.methods
                base = ".".join(["workbench", "methods", *([base] if base else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["workbench", "methods"]:
                found.add(parts[2] if len(parts) > 2 and parts[2] in MODULES else "__init__")
    return found


def test_no_method_imports_another_method():
    crossed = {m: sorted(package_imports(PACKAGE / f"{m}.py") - SHARED - {m}) for m in sorted(MODULES)}
    assert not {m: deps for m, deps in crossed.items() if deps}, crossed


def test_every_method_file_registers_its_methods():
    registered = {cls.__module__.rpartition(".")[2] for cls in METHODS.values()}
    assert MODULES - SHARED <= registered, sorted(MODULES - SHARED - registered)


def test_the_checker_catches_a_sibling_and_the_package(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("from workbench.methods.parts import teacher_step\nfrom workbench.methods.lcm import LCM\n"
                 "def f():\n    from . import dmd2\n    from workbench.methods import METHODS\n")
    assert package_imports(f) - SHARED == {"lcm", "dmd2", "__init__"}

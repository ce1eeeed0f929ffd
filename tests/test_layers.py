"""The library's layers: no module imports a higher layer (lazy imports inside functions included), and the
import graph between modules has no cycle."""
import ast
from pathlib import Path

import workbench

# Bottom to top. A module may import its own layer and the ones below.
LAYERS = [
    ["workbench", "workbench.config", "workbench.flow", "workbench.vp", "workbench.files", "workbench.folders",  # folders: the layout
     "workbench.cli",                                 # cli: one-line errors, for the CLI and the app
     "workbench.devices"],                            # devices: the device rule and the share of each process
    ["workbench.models", "workbench.data"],
    ["workbench.sampling", "workbench.generate"],     # generate: a Model sampled to tensors and sheets (train uses it)
    ["workbench.methods"],
    ["workbench.train"],
    ["workbench.runs", "workbench.export", "workbench.export_diffusers", "workbench.preferences"],
    ["workbench.eval", "workbench.compare", "workbench.study"],
    ["workbench.plots"],                              # draws eval's tables; evaluate draws nothing itself
    ["workbench.pipeline", "workbench.__main__", "app", "study_app"],   # study_app: the annotators' server
]
PACKAGE = Path(workbench.__file__).parent


def layer_of(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    for name in ("app", "study_app"):
        if (PACKAGE.parent / f"{name}.py").is_file():
            out[name] = PACKAGE.parent / f"{name}.py"
    return out


def imports(path: Path, module: str) -> set[str]:
    """Every workbench module `path` imports, at the top or inside a function."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from workbench.eval import report`
    known = modules()
    return {m for m in found if m in known and m != module}


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, path in modules().items():
        for dep in imports(path, module):
            if layer_of(dep) > layer_of(module):
                upward.append(f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})")
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = {m: imports(p, m) - {m} for m, p in modules().items()}
    # a package's __init__ re-exporting its own modules is no cycle of the design: drop parent -> child edges
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a models module importing train is reported."""
    f = tmp_path / "bad.py"
    f.write_text("def f():\n    from workbench.train import loop\n")
    assert "workbench.train.loop" in imports(f, "workbench.models.bad")
    assert layer_of("workbench.train.loop") > layer_of("workbench.models.bad")


def long_functions(path: Path, limit: int = 60) -> list[str]:
    """Functions (methods and nested ones included) longer than `limit` lines, decorators aside."""
    return [f"{path.name}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_the_loop_and_the_app_are_short_functions():
    """Issue 34: the loop reads as its steps, the app as one function per tab."""
    files = [*(PACKAGE / "train").glob("*.py"), PACKAGE.parent / "app.py", PACKAGE.parent / "study_app.py"]
    found = [hit for f in files if f.is_file() for hit in long_functions(f)]
    assert not found, "\n".join(found)


def test_the_length_check_counts_lines(tmp_path):
    f = tmp_path / "long.py"
    f.write_text("def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n    return 1\n")
    assert long_functions(f) == ["long.py:1 f (61 lines)"]

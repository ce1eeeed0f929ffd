"""The metric table (workbench/eval/metrics.py) is the one source of metric names, titles, directions and groups:
every column an evaluation writes has a row, and the tables, plots, compare and the app read it."""
import ast
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import shipped
from workbench.eval import metrics
from workbench.eval.fvd import TOY_FVD_WEIGHTS
from workbench.eval.tables import metric_columns, stage_changes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TABLES = sorted((ROOT / "experiments").rglob("results.csv"))


def test_every_metric_has_one_row_a_title_a_direction_and_a_known_group():
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names)) and not any(n.endswith(metrics.PROXY) for n in names)
    for m in metrics.METRICS:
        assert m.title and m.better in ("higher", "lower", "nearer", None), m
        assert m.group in ("timing", "table1", "fidelity", "vbench", "oracle", "diversity"), m
        assert (m.target is not None) == (m.better == "nearer"), m
    assert [m.group for m in metrics.METRICS] == sorted((m.group for m in metrics.METRICS),
                                                        key=["timing", "table1", "fidelity", "vbench", "oracle", "diversity"].index)


@pytest.mark.skipif(not shipped(TOY_FVD_WEIGHTS).is_file(), reason="toy FVD weights not built")
def test_every_column_an_evaluation_scores_has_a_row():
    """Scorer.clips on a toy batch (the per-clip columns), plus the columns _score adds: FVD per extractor, s/clip
    and the VBench quality groups."""
    from workbench.config import Config
    from workbench.data.synthetic import to_uint8
    from workbench.eval.report import EvalSpec, Scorer
    from workbench.eval.vbench import quality_groups
    from workbench.generate import test_batch
    batch = test_batch(Config(), 2)
    scorer = Scorer(EvalSpec(cache=""))
    per_clip = scorer.clips(np.stack([to_uint8(v) for v in batch["video"]]), batch)
    columns = [k for k in per_clip if not k.startswith("features_")]
    columns += ["sec_per_clip", *scorer.extractors, *quality_groups({k: 1.0 for k in columns})]
    assert [c for c in columns if metrics.metric(c) is None] == []
    assert {"fvd", "fvd_ae", "psnr", "temporal_quality_proxy", "solid", "free_up"} <= set(columns)


@pytest.mark.parametrize("path", SHIPPED_TABLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_column_of_a_shipped_results_table_has_a_row(path):
    columns = metric_columns(pd.read_csv(path))                   # every numeric column but the ids
    assert len(columns) > 20 and [c for c in columns if metrics.metric(c) is None] == []


def test_titles_and_order_come_from_the_table():
    df = pd.DataFrame({"method": ["a"], "steps": [1], "nfe": [1], "seed": [0], "num": [1], "wobble": [1.0],
                       "free_up": [0.5], "fvd": [1.0], "temporal_quality_proxy": [0.9], "sec_per_clip": [0.1]})
    assert metric_columns(df) == ["sec_per_clip", "fvd", "temporal_quality_proxy", "free_up", "wobble"]
    assert [metrics.title(c) for c in metric_columns(df)] == ["s/clip", "FVD", "Temporal Quality (proxy)",
                                                              "free up", "wobble"]


@pytest.mark.parametrize("column, a, b, verdict", [("fvd", 2.0, 1.0, 1), ("psnr", 2.0, 1.0, -1),
                                                   ("sharpness", 0.5, 0.9, 1), ("sharpness", 0.9, 1.3, -1),
                                                   ("dynamic_degree_proxy", 0.1, 0.9, 0), ("free_up", 0.1, 0.9, 0),
                                                   ("wobble", 1.0, 2.0, 0), ("background_mae", 3.0, 2.0, 1)])
def test_better_directions(column, a, b, verdict):
    assert metrics.verdict(column, a, b) == verdict


def test_stage_changes_read_the_directions():
    rows = [{"method": m, "steps": 1, "nfe": 1, "seed": s, "num": 4, "fvd": v + s, "free_up": v / 100 + s / 1000}
            for m, v in (("a", 100.0), ("b", 50.0)) for s in (0, 1)]
    text = stage_changes(pd.DataFrame(rows), ["a", "b"], [1])
    assert "better: FVD 100.5 -> 50.50" in text and "moved: free up" in text


def test_compare_shows_the_tables_per_clip_metrics():
    from workbench import compare
    assert compare.PER_CLIP == {m.name for m in metrics.METRICS if m.per_clip}
    assert compare.PER_CLIP <= set(metrics.names("oracle", "fidelity"))


def test_the_app_offers_the_tables_metrics_and_the_declared_curves(tmp_path):
    """The Results tab's metric dropdown is the metric table; its curve dropdown is plots.CURVES."""
    import importlib.util
    from workbench import plots
    spec = importlib.util.spec_from_file_location("workbench_app", ROOT / "app.py")  # this checkout's, not a module
    app = sys.modules[spec.name] = importlib.util.module_from_spec(spec)            # named `app` met earlier
    spec.loader.exec_module(app)
    page = app.build([tmp_path], tmp_path / "cache")
    dropdowns = {b.label: b for b in page.blocks.values() if type(b).__name__ == "Dropdown"}
    metric = dropdowns["metric against steps"]
    assert [c[1] for c in metric.choices] == metrics.names() and metric.value == metrics.HEADLINE
    curves = [c[1] for c in dropdowns["training curve of every run that logged it"].choices]
    assert curves == [k for keys in plots.CURVES.values() for k in keys]


def _name_lists(known: set[str], skip: set[str]) -> list[str]:
    """Lists, tuples and sets of two or more of `known` in the library and the app, outside the files `skip`."""
    found = []
    for f in [*(ROOT / "workbench").rglob("*.py"), ROOT / "app.py"]:
        if f.name in skip:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            items = node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else []
            named = [e.value for e in items if isinstance(e, ast.Constant) and e.value in known]
            if len(named) >= 2:
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}: {named}")
    return found


def test_no_module_lists_metric_or_curve_names_but_their_one_declaration():
    """A list of metric names outside workbench/eval/metrics.py, or of training-curve names outside plots.CURVES,
    is a second source (vbench.py's groups of dimensions aside: they are its formula)."""
    from workbench import plots
    assert _name_lists(set(metrics.names()), {"metrics.py", "vbench.py"}) == []
    assert _name_lists({k for keys in plots.CURVES.values() for k in keys}, {"plots.py"}) == []

"""The evaluation table end to end on a micro run: every metric, variants, caching, plots."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from workbench import shipped
from workbench.eval.fvd import TOY_FVD_WEIGHTS

pytestmark = pytest.mark.skipif(not shipped(TOY_FVD_WEIGHTS).is_file(), reason="toy FVD weights not built")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, request):
    from workbench.eval.report import EvalSpec, evaluate
    from workbench.plots import evaluation_figures
    root = request.config.rootpath
    tmp = tmp_path_factory.mktemp("eval")
    r = subprocess.run([sys.executable, "-m", "workbench", "train", "experiments/micro/teacher.yaml", "--out",
                        str(tmp / "run"), "--set", "train.steps=2"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    spec = EvalSpec(cache=str(tmp / "cache"))
    df = evaluate([str(tmp / "run")], [1, 2], 3, [0, 1], tmp / "out", batch_size=2, names=["micro"], spec=spec,
                  draw=evaluation_figures)
    return tmp, spec, df


def test_table_has_every_metric_and_its_variant(evaluated):
    tmp, _, df = evaluated
    assert sorted(zip(df.steps, df.seed)) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    expected = {"fvd", "temporal_quality_proxy", "frame_quality_proxy", "i2v_subject", "i2v_background", "psnr",
                "ssim", "subject_consistency", "background_consistency", "temporal_flickering",
                "motion_smoothness_proxy", "dynamic_degree_proxy", "aesthetic_quality_proxy", "imaging_quality_proxy",
                "solid", "sharpness", "count_ok", "sec_per_clip", "nfe", "fvd_ae"}
    assert expected <= set(df.columns)
    assert df[list(expected)].notna().all().all()
    assert (df.fvd >= 0).all() and (df.fvd_variant.str.contains(r"toy-fvd@[0-9a-f]{12}.*3 videos")).all()
    assert (df.fvd_ae >= 0).all() and (df.fvd_ae_variant.str.contains(r"toy-ae@[0-9a-f]{12}.*3 videos")).all()
    table = (tmp / "out" / "table.md").read_text()
    for text in ("FVD", "Temporal Quality (proxy)", "Frame Quality (proxy)", "I2V Subject", "SSIM", "± ",
                 "fvd_variant: toy-fvd@", "real test clips", "| FVD | FVD (toy-ae) |", "fvd_ae_variant: toy-ae@"):
        assert text in table
    ref = pd.read_csv(tmp / "out" / "reference.csv")
    assert ref.psnr.iloc[0] == 100.0 and ref.ssim.iloc[0] == pytest.approx(1.0)
    assert (tmp / "out" / "fvd_vs_steps.html").stat().st_size < 100_000  # Figure 7, plotly.js from its CDN
    # drawn by the caller's `draw` into the staged folder: part of the eval output its manifest claims
    assert "fvd_vs_steps.html" in json.loads((tmp / "out" / ".wb-outputs.json").read_text())["files"]


def test_second_run_reads_cached_samples_and_reference(evaluated, monkeypatch):
    import workbench.eval.report as report
    tmp, spec, df = evaluated
    monkeypatch.setattr(report, "generate", lambda *a, **k: pytest.fail("sampled although cached"))
    again = report.evaluate([str(tmp / "run")] * 2, [1, 2], 3, [0, 1], tmp / "out2", batch_size=2,
                            names=["micro", "micro_again"], spec=spec, sheet_num=0)
    cols = ["fvd", "fvd_ae", "psnr", "ssim", "temporal_quality_proxy", "sec_per_clip"]
    for name in ("micro", "micro_again"):
        pd.testing.assert_frame_equal(again[again.method == name][cols].reset_index(drop=True), df[cols])
    assert len(pd.read_csv(tmp / "out2" / "reference.csv")) == 1  # one reference row per distinct test set
    assert not (tmp / "out2" / "fvd_vs_steps.html").exists()          # evaluate itself draws nothing


def test_figures_from_the_summary(evaluated):
    from workbench.eval.tables import summarise
    from workbench.plots import ablation_table, method_bars, metric_vs_steps
    _, _, df = evaluated
    summary = summarise(df)
    assert len(metric_vs_steps(summary, "fvd").data) == 1
    assert method_bars(summary, "fvd").layout.yaxis.title.text == "FVD"
    table = ablation_table(summary, ["fvd", "temporal_quality_proxy"])
    assert list(table.data[0].header.values)[-1] == "Temporal Quality (proxy)"


def test_the_fvd_reference_is_named_by_what_decides_the_test_clips():
    """TA's models train on preference pairs (data.preferences) but share the teacher's test clips: one reference."""
    from workbench.methods import load_config
    from workbench.eval.report import test_split_key
    base = load_config(None).data
    prefs = ["data.preferences=runs/prefs", "data.train_size=7", "train.batch_size=4"]
    assert test_split_key(load_config(None, prefs).data) == test_split_key(base)
    assert test_split_key(load_config(None, ["data.toy.size=16"]).data) != test_split_key(base)
    assert test_split_key(load_config(None, ["data.kind=videos", "data.test_size=4"]).data) != \
        test_split_key(load_config(None, ["data.kind=videos", "data.test_size=8"]).data)

"""The evaluation table end to end on a micro run: every metric, variants, caching, plots, per-clip results, the
diversity across seeds, paired comparisons and the validation split."""
import json
import subprocess
import sys

import numpy as np
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
                 "fvd_variant: toy-fvd@", "real test clips", "| FVD | FVD (toy-ae) |", "fvd_ae_variant: toy-ae@",
                 "3 test clips each", "## Diversity across seeds 0,1", "| pixel spread | direction agreement |"):
        assert text in table
    assert (df.split == "test").all() and df.fvd_variant.str.contains("reference: test clips 0-2 of data spec").all()
    ref = pd.read_csv(tmp / "out" / "reference.csv")
    assert ref.psnr.iloc[0] == 100.0 and ref.ssim.iloc[0] == pytest.approx(1.0)
    assert (tmp / "out" / "fvd_vs_steps.html").stat().st_size < 100_000  # Figure 7, plotly.js from its CDN
    # drawn by the caller's `draw` into the staged folder: part of the eval output its manifest claims
    assert "fvd_vs_steps.html" in json.loads((tmp / "out" / ".wb-outputs.json").read_text())["files"]


def test_per_clip_rows_features_and_diversity_are_written_beside_the_table(evaluated):
    tmp, _, df = evaluated
    clips = pd.read_csv(tmp / "out" / "clips.csv")
    assert len(clips) == 4 * 3 and list(clips.columns[:5]) == ["method", "steps", "nfe", "seed", "clip"]
    means = clips.groupby(["steps", "seed"])[["psnr", "temporal_quality_proxy", "solid"]].mean()  # the table's means
    table = df.set_index(["steps", "seed"])[means.columns]
    pd.testing.assert_frame_equal(means, table.loc[means.index], check_names=False)
    with np.load(tmp / "out" / "features.npz") as f:
        assert f["fvd"].shape[:2] == (4, 3) and f["reference_fvd_ae"].shape[:2] == (1, 3)
        assert list(zip(f["steps"], f["seed"])) == list(zip(df.steps, df.seed))
    spread = pd.read_csv(tmp / "out" / "diversity.csv")
    assert len(spread) == 2 * 3 and (spread.pixel_spread > 0).all()
    assert spread.direction_agreement.dropna().between(0, 1).all()


def test_paired_differences_of_an_eval_output_match_its_table(evaluated):
    from workbench.eval.paired import paired_differences, paired_markdown
    tmp, _, df = evaluated
    table = paired_differences(tmp / "out", [("micro:1", "micro:2")], boot=50)
    paired = table.set_index("metric")
    assert {"fvd", "fvd_ae", "psnr", "temporal_quality_proxy", "pixel_spread"} <= set(paired.index)
    mean = df.groupby("steps")[["fvd", "psnr"]].mean()
    assert paired.loc["psnr", "difference"] == pytest.approx(mean.psnr[1] - mean.psnr[2])
    assert paired.loc["fvd", "mean_a"] == pytest.approx(mean.fvd[1], rel=1e-4)      # float32 features
    assert paired.loc["fvd", "low"] <= paired.loc["fvd", "difference"] <= paired.loc["fvd", "high"]
    assert (paired.seeds.drop(["pixel_spread", "direction_agreement"]) == "0,1").all()
    assert "clips is too narrow (a percentile bootstrap undercovers" in paired_markdown(table)   # 3 clips or fewer


def test_the_validation_split_is_its_own_clips_and_says_so(evaluated):
    from workbench.eval.report import evaluate
    tmp, spec, _ = evaluated
    with pytest.raises(ValueError, match="data.validation_size: 0"):
        evaluate([str(tmp / "run")], [1], 3, [0, 1], tmp / "none", spec=spec, split="validation")
    df = evaluate([str(tmp / "run")], [1], 3, [0, 1], tmp / "val", batch_size=2, names=["micro"], spec=spec,
                  overrides=["data.validation_size=3"], split="validation")
    assert (df.split == "validation").all()
    assert df.fvd_variant.str.contains("reference: validation clips 0-2 of data spec").all()
    table = (tmp / "val" / "table.md").read_text()
    assert "3 validation clips each" in table and "real validation clips" in table and "test clips" not in table
    with np.load(tmp / "out" / "features.npz") as test, np.load(tmp / "val" / "features.npz") as val:
        assert not np.allclose(test["reference_fvd"], val["reference_fvd"])          # other clips


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


def test_the_fvd_reference_is_named_by_what_decides_the_clips():
    """TA's models train on preference pairs (data.preferences) but share the teacher's test clips: one reference.
    The test split's key is the one the shipped tables name; the validation split has its own."""
    from workbench.methods import load_config
    from workbench.eval.report import split_key
    base = load_config(None).data
    prefs = ["data.preferences=runs/prefs", "data.train_size=7", "train.batch_size=4", "data.validation_size=9"]
    assert split_key(load_config(None, prefs).data) == split_key(base)
    assert split_key(base)[:8] == "dc5f2c0d"                              # experiments/toy/eval/results.csv's
    assert split_key(load_config(None, ["data.toy.size=16"]).data) != split_key(base)
    assert split_key(base, "validation") != split_key(base)
    videos = lambda *kv: load_config(None, ["data.kind=videos", *kv]).data  # noqa: E731
    assert split_key(videos("data.test_size=4")) != split_key(videos("data.test_size=8"))
    assert split_key(videos("data.validation_size=4"), "validation") != \
        split_key(videos("data.validation_size=8"), "validation")

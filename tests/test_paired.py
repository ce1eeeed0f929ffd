"""Paired comparisons (workbench/eval/paired.py) and the diversity across seeds (workbench/eval/diversity.py)
against known answers, on hand-built eval folders: no model runs here."""
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from workbench.data.synthetic import TEST_SEED_OFFSET, render_clip
from workbench.eval.diversity import diversity, first_move
from workbench.eval.fvd import fvd
from workbench.eval.paired import EvalFolder, paired_differences, paired_markdown, parse_pair

SEEDS, CLIPS = (0, 1, 2), 120


def _eval_folder(path, shift_b=1.0, fvd_shift_b=0.0):
    """An eval output of methods a and b at 4 steps: each clip has its own level (sd 5, shared by both methods:
    the pairing removes it), b's psnr is `shift_b` lower, seeds add noise of sd 0.2; b's FVD features are shifted
    by `fvd_shift_b`. Diversity: a spreads 2 more per clip."""
    rng = np.random.default_rng(0)
    level = rng.normal(30, 5, CLIPS)
    rows = [{"method": m, "steps": 4, "nfe": 4, "seed": s, "clip": c,
             "psnr": level[c] - (shift_b if m == "b" else 0.0) + rng.normal(0, 0.2),
             "direction_agree": np.nan if c % 3 == 0 else float(rng.random() < 0.8), "speed_agree": np.nan}
            for m in ("a", "b") for s in SEEDS for c in range(CLIPS)]
    pd.DataFrame(rows).to_csv(path / "clips.csv", index=False)
    pd.DataFrame([{"method": m, "steps": 4, "nfe": 4, "seed": s, "num": CLIPS, "split": "validation"}
                  for m in ("a", "b") for s in SEEDS]).to_csv(path / "results.csv", index=False)
    spread = level / 3
    pd.DataFrame([{"method": m, "steps": 4, "nfe": 4, "clip": c, "pixel_spread": spread[c] + 2 * (m == "a")}
                  for m in ("a", "b") for c in range(CLIPS)]).to_csv(path / "diversity.csv", index=False)
    real = rng.normal(size=(CLIPS, 8))
    sets = [(m, s) for m in ("a", "b") for s in SEEDS]
    feats = np.stack([rng.normal(size=(CLIPS, 8)) + (fvd_shift_b if m == "b" else 0.0) for m, _ in sets])
    np.savez(path / "features.npz", method=np.array([m for m, _ in sets]), steps=np.full(len(sets), 4),
             seed=np.array([s for _, s in sets]), reference=np.zeros(len(sets), int), fvd=feats, reference_fvd=real[None])
    return feats, real


def test_a_paired_difference_is_found_where_the_clips_vary_far_more(tmp_path):
    _eval_folder(tmp_path, shift_b=1.0)
    df = paired_differences(tmp_path, [("a:4", "b:4")], ["psnr"], boot=500).set_index("metric")
    r = df.loc["psnr"]
    assert r.difference == pytest.approx(1.0, abs=0.1) and r.low < 1.0 < r.high
    assert r.high - r.low < 0.2            # the clips' own spread (sd 5) is paired away: unpaired it would be ~2.5
    assert r.verdict == "a better" and r.clips == CLIPS and r.seeds == "0,1,2"
    assert df.attrs["split"] == "validation"


def test_a_model_against_itself_differs_by_nothing(tmp_path):
    _eval_folder(tmp_path)
    df = paired_differences(tmp_path, [("a:4", "a:4")], boot=200)
    assert list(df.metric) == ["fvd", "psnr", "direction_agree", "speed_agree", "pixel_spread"]  # the table's order
    defined = df[df.metric != "speed_agree"]
    assert (defined.difference == 0).all() and (defined.low == 0).all() and (defined.high == 0).all()
    assert set(defined.verdict) == {"not separated"}
    assert df.set_index("metric").loc["speed_agree", "verdict"] == "no clips"             # NaN on every clip
    assert df.set_index("metric").loc["direction_agree", "clips"] == CLIPS - CLIPS // 3   # NaN clips left out


def test_fvd_is_recomputed_on_each_resample_of_the_same_clips(tmp_path):
    feats, real = _eval_folder(tmp_path, fvd_shift_b=1.0)
    r = paired_differences(tmp_path, [("a:4", "b:4")], ["fvd"], boot=200).iloc[0]
    assert r.mean_a == pytest.approx(np.mean([fvd(f, real) for f in feats[:3]]), rel=1e-5)
    assert r.mean_b == pytest.approx(np.mean([fvd(f, real) for f in feats[3:]]), rel=1e-5)
    assert r.high < 0 and r.verdict == "a better" and r.low < r.difference < r.high   # b is 1 off in 8 dims: ~8


def test_diversity_is_compared_per_clip_with_no_seeds(tmp_path):
    _eval_folder(tmp_path)
    r = paired_differences(tmp_path, [("a:4", "b:4")], ["pixel_spread"], boot=200).iloc[0]
    assert r.difference == pytest.approx(2.0) and r.seeds == "-" and r.verdict == "differ"   # no better direction
    text = paired_markdown(paired_differences(tmp_path, [("a:4", "b:4")], boot=100))
    assert "validation clips" in text and "| a:4 | b:4 | pixel spread | 120 | - |" in text and "note:" not in text


def test_bad_pairs_and_metrics_are_refused_in_one_line(tmp_path, capsys):
    from workbench.__main__ import main
    _eval_folder(tmp_path)
    with pytest.raises(ValueError, match=r"no rows for c:4 .*there: a:4, b:4"):
        paired_differences(tmp_path, [("a:4", "c:4")])
    with pytest.raises(ValueError, match="--metrics: fvd_x"):
        paired_differences(tmp_path, [("a:4", "b:4")], ["fvd_x"])
    assert EvalFolder(tmp_path).entries() == ["a:4", "b:4"]                  # what the app's pickers offer
    with pytest.raises(ValueError, match="METHOD:STEPS"):
        parse_pair("a4")
    clips = pd.read_csv(tmp_path / "clips.csv")
    clips[~((clips.method == "b") & (clips.seed == 2))].to_csv(tmp_path / "clips.csv", index=False)
    with pytest.raises(ValueError, match="not paired"):
        paired_differences(tmp_path, [("a:4", "b:4")], ["psnr"])
    assert main(["paired", str(tmp_path), "--pair", "a:4", "b:4", "--level", "95"]) == 2
    err = capsys.readouterr().err
    assert "--level" in err and err.strip().count("\n") == 0
    assert main(["paired", str(tmp_path), "--pair", "a:4", "a:4", "--metrics", "pixel_spread", "--boot", "50"]) == 0
    assert "| a:4 | a:4 | pixel spread |" in capsys.readouterr().out


def _free_clip():
    """A toy test clip whose first object's caption states no direction, and that object's ground truth."""
    for s in range(100):
        video, _, objs = render_clip(TEST_SEED_OFFSET + s)
        truth = [asdict(o) for o in objs]
        if len(truth) == 1 and not truth[0]["direction_stated"]:
            return video, truth


def test_diversity_of_known_continuations():
    """Seeds continuing the same way agree and do not spread; a frozen third seed ('none') halves nothing but
    leaves one pair in three agreeing, and spreads two pairs of three by its RMS distance."""
    video, truth = _free_clip()
    start = truth[0]["xy"]
    assert first_move(video, truth[0]) == ("right" if start[1][0] > start[0][0] else "left" if start[1][0] < start[0][0]
                                           else "down" if start[1][1] > start[0][1] else "up")
    frozen = np.repeat(video[:1], len(video), 0)
    same = diversity(np.stack([video, video])[:, None], [truth])
    assert same["pixel_spread"][0] == 0 and same["direction_agreement"][0] == 1
    three = diversity(np.stack([video, video, frozen])[:, None], [truth])
    rms = np.sqrt(((video[1:].astype(float) - frozen[1:]) ** 2).mean())
    assert three["pixel_spread"][0] == pytest.approx(2 * rms / 3, rel=1e-6)
    assert three["direction_agreement"][0] == pytest.approx(1 / 3)
    one = diversity(video[None, None])                                     # one seed: nothing to spread over
    assert set(one) == {"pixel_spread"} and np.isnan(one["pixel_spread"]).all()

"""The user study backend: known-answer tests of the rankings, and study building (content-hash names, equal size
and length, a manifest, all or nothing). The votes database's promises: tests/test_votes.py."""
import hashlib
import subprocess
import sys

import av
import numpy as np
import pandas as pd
import pytest

from workbench.data.io import read_frames
from workbench.study import build as study_build
from workbench.study.build import CORRUPTED, REAL, build_study, load_study
from workbench.study.ranking import (agreement, attention_flags, best_share, bootstrap_bt, bradley_terry,
                                     pairwise_outcomes, study_results, win_matrix)

TRUE = {"teacher@8": 0.9, "swiftvideo@4": 0.5, "da@4": -0.3, "ccd@4": -1.1}  # Bradley-Terry log-odds, mean 0


def slot(entrant: str, video: str = "") -> dict:
    method, steps = entrant.split("@")
    return {"method": method, "steps": int(steps), "video": video or entrant}


def simulate_pairwise(n: int, seed: int, strengths=TRUE) -> pd.DataFrame:
    """n pairwise votes between random pairs; A wins with probability sigmoid(beta_A - beta_B)."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    rows = []
    for i in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        p = 1 / (1 + np.exp(strengths[names[b]] - strengths[names[a]]))
        rows.append({"id": i, "annotator": f"u{i % 7}", "item": f"{i % 50:03d}", "criterion": "frame_quality",
                     "mode": "pairwise", "shown": [slot(names[a]), slot(names[b])],
                     "choice": "A" if rng.random() < p else "B"})
    return pd.DataFrame(rows)


# rankings
def test_bradley_terry_recovers_known_strengths_within_the_bootstrap_interval():
    votes = simulate_pairwise(6000, seed=1)
    bt = bootstrap_bt(pairwise_outcomes(votes), rounds=200, seed=0)
    assert list(bt.index) == sorted(TRUE, key=TRUE.get, reverse=True)  # the order
    for name, beta in TRUE.items():
        assert bt.loc[name, "lo"] <= beta <= bt.loc[name, "hi"], (name, beta, bt.loc[name].to_dict())
        assert bt.loc[name, "lo"] <= bt.loc[name, "strength"] <= bt.loc[name, "hi"]
    assert abs(bt["strength"].sum()) < 1e-6


def test_mm_and_logistic_regression_agree():
    outcomes = pairwise_outcomes(simulate_pairwise(800, seed=2))
    lr, mm = bradley_terry(outcomes), bradley_terry(outcomes, method="mm")
    assert np.allclose(lr.to_numpy(), mm.reindex(lr.index).to_numpy(), atol=1e-4)


def test_the_interval_narrows_as_votes_grow():
    few = bootstrap_bt(pairwise_outcomes(simulate_pairwise(300, seed=3)), rounds=200)
    many = bootstrap_bt(pairwise_outcomes(simulate_pairwise(3000, seed=3)), rounds=200)
    width_few, width_many = few["hi"] - few["lo"], (many["hi"] - many["lo"]).reindex(few.index)
    assert (width_many < 0.6 * width_few).all(), pd.DataFrame({"few": width_few, "many": width_many})


def pair_votes(choices: list[str], a="x@4", b="y@4") -> pd.DataFrame:
    return pd.DataFrame([{"id": i, "annotator": "u", "item": str(i), "criterion": "frame_quality", "mode": "pairwise",
                          "shown": [slot(a), slot(b)], "choice": c} for i, c in enumerate(choices)])


def test_ties_count_half():
    # one win and one tie: x won 1.5 of 2, so P(x beats y) = 3/4 and beta_x - beta_y = ln 3
    bt = bradley_terry(pairwise_outcomes(pair_votes(["A", "tie"])))
    assert bt["x@4"] - bt["y@4"] == pytest.approx(np.log(3), abs=1e-3)
    # a tie is worth exactly half a win and half a loss
    assert bradley_terry(pairwise_outcomes(pair_votes(["tie", "tie"]))).abs().max() < 1e-6
    with_ties = bradley_terry(pairwise_outcomes(pair_votes(["A", "B", "A", "tie", "tie"])))
    halves = bradley_terry(pairwise_outcomes(pair_votes(["A", "B", "A", "A", "B"])))
    assert with_ties.to_numpy() == pytest.approx(halves.to_numpy(), abs=1e-5)
    assert win_matrix(pairwise_outcomes(pair_votes(["A", "tie"]))).loc["x@4", "y@4"] == pytest.approx(0.75)


def test_both_bad_is_a_tie_or_dropped():
    out = pairwise_outcomes(pair_votes(["both_bad", "A"]))
    assert list(out["y"]) == [0.5, 1.0]
    assert list(pairwise_outcomes(pair_votes(["both_bad", "A"]), both_bad="drop")["y"]) == [1.0]


def test_a_best_of_n_vote_expands_to_a_win_over_each_other_video():
    shown = [slot("ccd@4"), slot("teacher@8"), slot("swiftvideo@4"), slot("da@4")]
    votes = pd.DataFrame([{"id": 7, "annotator": "u", "item": "000", "criterion": "temporal_consistency",
                           "mode": "best_of_n", "shown": shown, "choice": "2"}])
    out = pairwise_outcomes(votes)
    assert sorted(zip(out["a"], out["b"], out["y"])) == [("swiftvideo@4", "ccd@4", 1.0),
                                                         ("swiftvideo@4", "da@4", 1.0),
                                                         ("swiftvideo@4", "teacher@8", 1.0)]
    assert set(out["vote"]) == {7} and set(out["criterion"]) == {"temporal_consistency"}
    share = best_share(votes).set_index("entrant")
    assert share.loc["swiftvideo@4", "share"] == 1 and share.loc["ccd@4", "share"] == 0
    assert (share["votes"] == 1).all()


def best_of_n_votes(choices: dict[str, list[str]], attention: bool = False) -> pd.DataFrame:
    """{annotator: chosen entrant per item}; every annotator sees the same entrants per item."""
    entrants = [REAL + "@0", CORRUPTED + "@0"] if attention else list(TRUE)
    rows = []
    for who, picks in choices.items():
        for i, pick in enumerate(picks):
            shown = [slot(e, f"{e}-{i}") for e in entrants]
            rows.append({"id": len(rows) + (1000 if attention else 0), "annotator": who,
                         "item": f"{'a' if attention else 'i'}{i}", "criterion": "frame_quality",
                         "mode": "best_of_n", "shown": shown, "choice": str(entrants.index(pick))})
    return pd.DataFrame(rows)


def test_attention_checks_flag_annotators_and_their_votes_are_excluded():
    ranked = best_of_n_votes({"good": ["teacher@8"] * 4, "bad": ["ccd@4"] * 4})
    checks = best_of_n_votes({"good": ["real@0"] * 3, "bad": ["corrupted@0", "real@0", "corrupted@0"]},
                             attention=True)
    votes = pd.concat([ranked, checks], ignore_index=True)
    votes["id"] = range(len(votes))
    flags = attention_flags(votes).set_index("annotator")
    assert flags.loc["good", ["checks", "failed", "flagged"]].tolist() == [3, 0, False]
    assert flags.loc["bad", ["checks", "failed", "flagged"]].tolist() == [3, 2, True]
    res = study_results(votes, rounds=20)
    assert res.flagged == ["bad"] and res.excluded_votes == 4 and res.counted_votes == 4
    assert REAL + "@0" not in set(res.strengths["entrant"])  # attention items enter no ranking
    top = res.strengths.sort_values("strength").iloc[-1]
    assert top["entrant"] == "teacher@8" and top["criterion"] == "frame_quality"
    assert set(res.win_rates) == {"frame_quality"}


def test_agreement_is_one_when_annotators_agree_and_lower_when_they_do_not():
    same = agreement(best_of_n_votes({"u1": ["teacher@8", "ccd@4"], "u2": ["teacher@8", "ccd@4"]}))
    assert same.loc[0, "agreement"] == 1 and same.loc[0, "groups"] == 2 and same.loc[0, "fleiss_kappa"] == 1
    assert same.loc[0, "chance"] == pytest.approx(1 / 4)
    split = agreement(best_of_n_votes({"u1": ["teacher@8", "ccd@4"], "u2": ["teacher@8", "da@4"],
                                       "u3": ["da@4", "da@4"]}))
    # item 0: teacher, teacher, da -> 1 of 3 pairs agree; item 1: ccd, da, da -> 1 of 3
    assert split.loc[0, "agreement"] == pytest.approx(2 / 6)
    assert split.loc[0, "fleiss_kappa"] < same.loc[0, "fleiss_kappa"]


# building a study
@pytest.fixture(scope="module")
def built(tmp_path_factory, request):
    """A two-model study of the shipped toy models, built through the command line."""
    out = tmp_path_factory.mktemp("study") / "s"
    r = subprocess.run([sys.executable, "-m", "workbench", "study", "build", "--models", "teacher@8",
                        "experiments/toy/ccd@4", "--items", "2", "--seed", "3", "--attention-checks", "0.5",
                        "--out", str(out)], cwd=request.config.rootpath, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_a_study_build_writes_content_hash_videos_of_one_size_and_a_manifest(built):
    study = load_study(built)
    m = study.manifest
    assert [(x["name"], x["steps"]) for x in m["models"]] == [("teacher", 8), ("ccd", 4)]
    assert m["models"][0]["folder"] == "experiments/toy/teacher"
    assert len(study.items) == 3 and m["attention_checks"] == 1  # ceil(2 * 0.5)
    files = sorted((built / "videos").iterdir())
    listed = {v["video"] for it in m["items"] for v in it["videos"]}
    assert {f.name for f in files} == listed and len(files) == 6
    for f in files:
        assert f.name == hashlib.sha256(f.read_bytes()).hexdigest() + ".mp4"
        assert read_frames(f).shape == (8, 192, 192, 3)
        with av.open(str(f)) as box:
            assert box.streams.video[0].average_rate == 8
    for it in m["items"]:
        png = study.frame_path(it["first_frame"])
        assert png.name == hashlib.sha256(png.read_bytes()).hexdigest() + ".png"
        assert it["caption"] and len(it["videos"]) == 2
        if it["attention"]:
            assert [v["method"] for v in it["videos"]] == [REAL, CORRUPTED]
            assert it["attention"]["answer"] == it["videos"][0]["video"]
        else:
            assert [(v["method"], v["steps"]) for v in it["videos"]] == [("teacher", 8), ("ccd", 4)]
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # nothing the annotator receives names a method: file names are hashes, the mp4 carries no method
    for f in files + sorted((built / "frames").iterdir()):
        for word in (b"teacher", b"experiments"):
            assert word not in f.name.encode() and word not in f.read_bytes()


def test_an_attention_item_shows_the_real_clip_and_a_corrupted_copy(built):
    study = load_study(built)
    it = next(i for i in study.manifest["items"] if i["attention"])
    real, bad = (read_frames(study.video_path(v["video"])).astype(float) for v in it["videos"])
    assert np.abs(real - bad).mean() > 30  # visibly different


def test_a_study_build_refuses_an_existing_out(built, request):
    r = subprocess.run([sys.executable, "-m", "workbench", "study", "build", "--items", "2", "--out", str(built)],
                       cwd=request.config.rootpath, capture_output=True, text=True)
    assert r.returncode == 2 and str(built) in r.stderr and r.stderr.strip().count("\n") == 0
    with pytest.raises(FileExistsError):
        build_study(["teacher@8", "ccd@4"], 2, 0, built)


@pytest.mark.parametrize("models,error", [(["teacher@8"], "at least two"), (["teacher"], "FOLDER@STEPS"),
                                          (["teacher@0", "ccd@4"], "FOLDER@STEPS"),
                                          (["teacher@8", "nowhere@4"], "nowhere"),
                                          (["teacher@8", "teacher@8"], "twice")])
def test_a_study_build_refuses_bad_model_specs(tmp_path, models, error):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        build_study(models, 2, 0, tmp_path / "s")
    assert not list(tmp_path.iterdir())


def test_a_failed_study_build_leaves_no_folder(tmp_path, monkeypatch):
    calls = []
    real_video = study_build._video

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_video(*args, **kwargs)

    monkeypatch.setattr(study_build, "_video", failing)
    with pytest.raises(OSError, match="disk full"):
        build_study(["teacher@8", "ccd@4"], 2, 0, tmp_path / "s")
    assert len(calls) == 3 and not list(tmp_path.iterdir())


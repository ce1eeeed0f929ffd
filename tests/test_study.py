"""The user study backend: known-answer tests of the rankings, the votes database's promises (hashed passwords,
one row per judgement, nothing stored from a malformed vote, an item never served twice), and study building
(content-hash names, equal size and length, a manifest, all or nothing)."""
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from workbench.data.io import read_frames
from workbench.study import build as study_build
from workbench.study.build import CRITERIA, CORRUPTED, REAL, Study, build_study, load_study
from workbench.study.ranking import (agreement, attention_flags, best_share, bootstrap_bt, bradley_terry,
                                     pairwise_outcomes, study_results, win_matrix)
from workbench.study.votes import VoteStore, export_votes, read_users

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


# the votes database
def fake_study(tmp_path: Path, items: int = 4, n: int = 3, attention: int = 1) -> Study:
    """A manifest without videos: enough for the database, which never opens a video."""
    listed = []
    for i in range(items + attention):
        if i < items:
            videos = [{"video": f"{i}-{m}.mp4", "method": m, "steps": 4} for m in ["ccd", "da", "swiftvideo"][:n]]
            att = None
        else:
            videos = [{"video": f"{i}-real.mp4", "method": REAL, "steps": 0}] + [
                {"video": f"{i}-bad{k}.mp4", "method": CORRUPTED, "steps": 0} for k in range(n - 1)]
            att = {"answer": f"{i}-real.mp4"}
        listed.append({"id": f"{i:03d}", "clip": i, "caption": f"clip {i}", "first_frame": f"{i}.png",
                       "videos": videos, "attention": att})
    return Study(tmp_path, {"format": 1, "study": "study-test", "criteria": list(CRITERIA), "items": listed})


@pytest.fixture
def store(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# study owner's file\nalice:correct horse battery\n\nbob:hunter2:with:colons\n")
    s = VoteStore(tmp_path / "votes.sqlite")
    assert s.add_annotators(users) == ["alice", "bob"]
    return s


def rows(store: VoteStore) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]


def test_passwords_are_stored_hashed(store):
    assert store.check_login("alice", "correct horse battery")
    assert store.check_login("bob", "hunter2:with:colons")
    assert not store.check_login("alice", "wrong") and not store.check_login("mallory", "correct horse battery")
    raw = b"".join(Path(f).read_bytes() for f in store.path.parent.glob("votes.sqlite*"))
    assert b"correct horse" not in raw and b"hunter2" not in raw
    with sqlite3.connect(store.path) as db:
        (salt_a, hash_a), (salt_b, _) = db.execute("SELECT salt, hash FROM annotators ORDER BY username")
    assert len(hash_a) == 32 and salt_a != salt_b
    store.add_annotator("alice", "new password")  # the owner changes a password: the old one stops working
    assert store.check_login("alice", "new password") and not store.check_login("alice", "correct horse battery")


def test_a_users_file_with_a_bad_line_is_refused(tmp_path):
    f = tmp_path / "users.txt"
    f.write_text("alice:pw\nbob\n")
    with pytest.raises(ValueError, match=r"users.txt:2"):
        read_users(f)
    f.write_text("alice:pw\nalice:other\n")
    with pytest.raises(ValueError, match="twice"):
        read_users(f)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_users(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["best_of_n", "pairwise"])
def test_an_item_is_never_served_twice_and_a_reload_shows_the_same_order(store, tmp_path, mode):
    study = fake_study(tmp_path)
    seen = []
    while (shown := store.next_item(study, "alice", mode)) is not None:
        assert shown.left == len(study.items) - len(seen)
        assert store.next_item(study, "alice", mode) == shown  # a reload: same item, same order
        assert len(shown.videos) == (3 if mode == "best_of_n" else 2)
        for k, criterion in enumerate(CRITERIA):
            assert store.vote(study, "alice", shown.item, criterion, mode, 0 if mode == "best_of_n" else "A",
                              videos=shown.videos)
            if k == 0:  # half-voted: still the current item, the voted criterion done
                again = store.next_item(study, "alice", mode)
                assert again.item == shown.item and again.criteria == CRITERIA[1:]
        seen.append(shown.item)
    assert sorted(seen) == sorted(study.items) and store.items_left(study, "alice", mode) == 0
    # another annotator meets the items in another order, each with its own slot order
    bob = [store.next_item(study, "bob", mode)]
    assert bob[0] is not None and store.items_left(study, "bob", mode) == len(study.items)


def test_slot_orders_differ_between_annotators_and_pairwise_attention_shows_the_real_clip(store, tmp_path):
    study = fake_study(tmp_path, items=30, n=3, attention=1)
    orders = {who: [tuple(v["video"] for v in VoteStore.slot_order(study, who, i, "best_of_n")) for i in study.items]
              for who in ["alice", "bob"]}
    assert orders["alice"] != orders["bob"]
    assert VoteStore.item_order(study, "alice") != VoteStore.item_order(study, "bob")
    for who in ["alice", "bob", "carol"]:
        pair = [v["video"] for v in VoteStore.slot_order(study, who, "030", "pairwise")]
        assert "30-real.mp4" in pair and len(set(pair)) == 2


def test_a_replayed_vote_stores_one_row(store, tmp_path):
    study = fake_study(tmp_path)
    shown = store.next_item(study, "alice")
    assert store.vote(study, "alice", shown.item, "frame_quality", "best_of_n", 1, videos=shown.videos)
    assert not store.vote(study, "alice", shown.item, "frame_quality", "best_of_n", 1, videos=shown.videos)
    assert not store.vote(study, "alice", shown.item, "frame_quality", "best_of_n", 2)  # the first vote stands
    votes = store.votes()
    assert len(votes) == 1 and votes.loc[0, "choice"] == "1" and rows(store) == 1
    assert [s["video"] for s in votes.loc[0, "shown"]] == list(shown.videos)
    assert {"method", "steps", "video"} == set(votes.loc[0, "shown"][0])


def test_concurrent_replays_store_one_row(store, tmp_path):
    study = fake_study(tmp_path)
    shown = store.next_item(study, "alice")
    results = []

    def cast():
        results.append(store.vote(study, "alice", shown.item, "image_alignment", "best_of_n", 0))

    threads = [threading.Thread(target=cast) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [False] * 7 + [True] and rows(store) == 1


def test_invalid_votes_store_nothing(store, tmp_path):
    study = fake_study(tmp_path)
    shown = store.next_item(study, "alice")
    other = next(i for i in study.items if i != shown.item)
    bad = [
        dict(item="999"),                                                 # unknown item
        dict(criterion="sharpness"),                                      # unknown criterion
        dict(mode="trio"),                                                # unknown mode
        dict(videos=("elsewhere.mp4",) + shown.videos[1:]),               # a video not shown to alice
        dict(videos=tuple(reversed(shown.videos))),                       # not in the order shown
        dict(choice="elsewhere.mp4"),
        dict(choice=3),                                                   # no such slot
        dict(choice=True),
        dict(mode="pairwise"),                                            # never served in that mode
        dict(item=other),                                                 # never served to alice
        dict(annotator="mallory"),                                        # unknown annotator
    ]
    for change in bad:
        args = dict(study=study, annotator="alice", item=shown.item, criterion="frame_quality", mode="best_of_n",
                    choice=0, videos=shown.videos) | change
        with pytest.raises(ValueError):
            store.vote(**args)
    assert rows(store) == 0
    store.next_item(study, "alice", "pairwise")
    with pytest.raises(ValueError, match="pairwise choice"):
        store.vote(study, "alice", shown.item, "frame_quality", "pairwise", 0)
    assert rows(store) == 0
    # a best-of-N choice may name the video instead of the slot
    assert store.vote(study, "alice", shown.item, "frame_quality", "best_of_n", shown.videos[2])
    assert store.votes().loc[0, "choice"] == "2"


def test_votes_export_to_csv_with_the_chosen_method(store, tmp_path):
    study = fake_study(tmp_path)
    shown = store.next_item(study, "alice")
    store.vote(study, "alice", shown.item, "frame_quality", "best_of_n", 1, app_version="0.1.0")
    pshown = store.next_item(study, "bob", "pairwise")
    store.vote(study, "bob", pshown.item, "temporal_consistency", "pairwise", "B")
    store.vote(study, "bob", pshown.item, "frame_quality", "pairwise", "tie")
    out = export_votes(store.path, tmp_path / "out" / "votes.csv")
    df = pd.read_csv(out)
    assert len(df) == 3 and {"study", "annotator", "item", "criterion", "mode", "shown", "choice", "shown_at",
                             "voted_at", "app_version", "chosen_method", "chosen_steps"} <= set(df.columns)
    first = df.iloc[0]
    assert first["chosen_method"] == json.loads(first["shown"])[1]["method"] and first["app_version"] == "0.1.0"
    assert pd.isna(df.iloc[2]["chosen_method"])  # a tie chooses nothing
    r = subprocess.run([sys.executable, "-m", "workbench", "study", "export", str(tmp_path), "--out",
                        str(tmp_path / "cli.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli.csv").read_text() == out.read_text()
    r = subprocess.run([sys.executable, "-m", "workbench", "study", "export", str(tmp_path / "none.sqlite"), "--out",
                        str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "none.sqlite" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "none.sqlite").exists()


def test_study_results_from_a_votes_database(store, tmp_path):
    study = fake_study(tmp_path, items=4, n=3, attention=1)
    for who in ["alice", "bob"]:
        while (shown := store.next_item(study, who)) is not None:
            methods = {v["video"]: v["method"] for v in study.items[shown.item]["videos"]}
            best = next(k for k, v in enumerate(shown.videos) if methods[v] in ("swiftvideo", REAL))
            for c in CRITERIA:
                store.vote(study, who, shown.item, c, "best_of_n", best)
    res = study_results(store.votes(study), rounds=20)
    assert res.flagged == [] and res.counted_votes == 2 * 4 * 3
    for c in CRITERIA:
        part = res.strengths[res.strengths["criterion"] == c]
        assert part.iloc[0]["entrant"] == "swiftvideo@4"
    share = res.best_share.set_index(["criterion", "entrant"])["share"]
    assert share[("frame_quality", "swiftvideo@4")] == 1
    assert (res.agreement["agreement"] == 1).all() and (res.agreement["groups"] == 4).all()


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


def test_results_of_a_study_without_votes_are_empty_not_an_error(store, tmp_path):
    res = study_results(store.votes(fake_study(tmp_path)), rounds=5)
    assert res.counted_votes == 0 and res.flagged == [] and res.strengths.empty and res.best_share.empty
    assert res.win_rates == {} and res.agreement.empty

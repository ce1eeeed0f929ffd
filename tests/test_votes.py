"""The votes store's promises, on both backends (an SQLite file; a PostgreSQL database on a server the tests start):
hashed passwords and limited login attempts, an item never served twice (nor in the other mode), one transaction
per item, the first answer standing, the server's play gate, and reading and exporting what was stored."""
import json
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.test_bad_inputs import cli, one_line_error
from workbench.study import NotReady, VoteStore, annotators, export_votes, open_store, read_votes
from workbench.study import votes as votes_module
from workbench.study.build import CORRUPTED, CRITERIA, REAL, Study
from workbench.study.ranking import study_results

BACKENDS = ["sqlite", "postgres"]


def fake_study(tmp_path: Path, items: int = 4, n: int = 3, attention: int = 1, frames: int = 2) -> Study:
    """A manifest without videos: enough for the database, which never opens a video. Videos of frames/8 s."""
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
    return Study(tmp_path, {"format": 1, "study": "study-test", "criteria": list(CRITERIA), "items": listed,
                            "video": {"frames": frames, "height": 16, "width": 16, "fps": 8}})


def new_store(request, tmp_path, backend: str, **kwargs) -> VoteStore:
    where = tmp_path / "votes.sqlite" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    return open_store(where, **kwargs)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, monkeypatch):
    monkeypatch.setitem(annotators.SCRYPT, "n", 2 ** 10)  # a cheaper hash (stored with each): faster tests
    users = tmp_path / "users.txt"
    users.write_text("# study owner's file\nalice:correct horse battery\n\nbob:hunter2:with:colons\n")
    s = new_store(request, tmp_path, request.param)
    assert s.add_annotators(users) == ["alice", "bob"]
    return s


def rows(store: VoteStore) -> int:
    return len(read_votes(store.location))


def sql(store: VoteStore, *statements: str) -> list:
    """Run SQL statements on the store's database in one transaction; the rows of the last one, a SELECT."""
    with store._transaction() as db:
        for statement in statements:
            cursor = db.execute(statement)
        return cursor.fetchall() if statement.startswith("SELECT") else []


def ready(store, study, who: str, shown) -> None:
    """What the annotator's browser does before a vote: fetch every video shown."""
    for v in shown.videos:
        store.record_fetch(study, who, v)


def vote(store, study, who: str, shown, choice, min_view_s=0, **kwargs):
    """Fetch the item's videos and submit the same choice on every criterion."""
    ready(store, study, who, shown)
    return store.submit(study, who, shown.item, shown.mode, {c: choice for c in study.criteria}, shown.videos,
                        min_view_s=min_view_s, **kwargs)


# annotators
def test_passwords_are_stored_hashed(store, tmp_path):
    assert store.check_login("alice", "correct horse battery")
    assert store.check_login("bob", "hunter2:with:colons")
    assert not store.check_login("alice", "wrong") and not store.check_login("mallory", "correct horse battery")
    if isinstance(store.location, Path):
        raw = b"".join(Path(f).read_bytes() for f in tmp_path.glob("votes.sqlite*"))
        assert b"correct horse" not in raw and b"hunter2" not in raw
    (salt_a, hash_a), (salt_b, _) = sql(store, "SELECT salt, hash FROM annotators ORDER BY username")
    assert len(hash_a) == 32 and salt_a != salt_b
    assert "correct horse" not in json.dumps(sql(store, "SELECT username, params FROM annotators"))
    store.add_annotator("alice", "new password")  # the owner changes a password: the old one stops working
    assert store.check_login("alice", "new password") and not store.check_login("alice", "correct horse battery")


def test_failed_logins_are_limited_per_name_and_per_address_without_computing_scrypt(store, monkeypatch):
    hashed = []
    real_hash = annotators._hash_password
    monkeypatch.setattr(annotators, "_hash_password", lambda *a: hashed.append(1) or real_hash(*a))
    for _ in range(annotators.MAX_FAILED_PER_NAME):
        assert not store.check_login("alice", "guess", "10.0.0.1")
    hashed.clear()
    assert not store.check_login("alice", "correct horse battery", "10.0.0.2")  # over the limit: even the password
    assert not store.check_login("alice", "guess") and hashed == []            # no scrypt computed
    assert store.check_login("bob", "hunter2:with:colons", "10.0.0.1")       # another name from that address
    for _ in range(3):  # a success does not count as a failure
        assert store.check_login("bob", "hunter2:with:colons", "10.0.0.1")
    monkeypatch.setattr(annotators, "MAX_FAILED_PER_ADDRESS", 8)
    for k in range(3):  # 5 failures from 10.0.0.1 so far, 3 more reach 8: then every name is refused from there
        assert not store.check_login(f"guess{k}", "pw", "10.0.0.1")
    assert not store.check_login("bob", "hunter2:with:colons", "10.0.0.1")
    assert store.check_login("bob", "hunter2:with:colons", "10.0.0.9")
    monkeypatch.setattr(annotators, "LOGIN_WINDOW_S", 0.3)  # the window passes: alice may log in again
    time.sleep(0.35)
    assert store.check_login("alice", "correct horse battery", "10.0.0.1")


def test_a_users_file_with_a_bad_line_is_refused(tmp_path):
    f = tmp_path / "users.txt"
    f.write_text("alice:pw\nbob\n")
    with pytest.raises(ValueError, match=r"users.txt:2"):
        annotators.read_users(f)
    f.write_text("alice:pw\nalice:other\n")
    with pytest.raises(ValueError, match="twice"):
        annotators.read_users(f)
    with pytest.raises(FileNotFoundError, match="nope"):
        annotators.read_users(tmp_path / "nope")


# serving
@pytest.mark.parametrize("mode", ["best_of_n", "pairwise"])
def test_an_item_is_never_served_twice_and_a_reload_shows_the_same_order(store, tmp_path, mode):
    study = fake_study(tmp_path)
    seen = []
    while (shown := store.next_item(study, "alice", mode)) is not None:
        assert shown.left == len(study.items) - len(seen) == store.items_left(study, "alice", mode)
        assert store.next_item(study, "alice", mode) == shown  # a reload: same item, same order, same time
        assert len(shown.videos) == (3 if mode == "best_of_n" else 2) and shown.criteria == CRITERIA
        assert vote(store, study, "alice", shown, 0 if mode == "best_of_n" else "A").new
        seen.append(shown.item)
    assert sorted(seen) == sorted(study.items) and store.items_left(study, "alice", mode) == 0
    assert rows(store) == len(study.items) * len(CRITERIA)
    # another annotator meets the items in another order, each with its own slot order
    assert store.next_item(study, "bob", mode) is not None and store.items_left(study, "bob", mode) == len(study.items)


def test_an_item_voted_in_one_mode_is_not_served_in_the_other(store, tmp_path):
    study = fake_study(tmp_path)
    pending = store.next_item(study, "alice", "pairwise")  # both modes meet the items in the same order
    first = store.next_item(study, "alice", "best_of_n")
    assert pending.item == first.item
    vote(store, study, "alice", first, 0)
    with pytest.raises(ValueError, match="already voted in best_of_n mode; an item is judged in one mode only"):
        vote(store, study, "alice", pending, "A")  # a page served before the vote in the other mode
    assert store.items_left(study, "alice", "pairwise") == len(study.items) - 1
    served = []
    while (shown := store.next_item(study, "alice", "pairwise")) is not None:
        assert shown.left == len(study.items) - 1 - len(served)
        served.append(shown.item)
        vote(store, study, "alice", shown, "A")
    assert first.item not in served and len(served) == len(study.items) - 1
    assert store.next_item(study, "alice", "best_of_n") is None  # and the other way round
    assert store.items_left(study, "alice", "best_of_n") == 0 and rows(store) == len(study.items) * len(CRITERIA)


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_one_mode_per_item_off_an_item_is_voted_in_both_modes(backend, request, tmp_path):
    s = new_store(request, tmp_path, backend, one_mode_per_item=False)
    s.add_annotator("alice", "pw")
    study = fake_study(tmp_path, items=2, attention=0)
    for mode, choice in [("best_of_n", 0), ("pairwise", "B")]:
        while (shown := s.next_item(study, "alice", mode)) is not None:
            assert vote(s, study, "alice", shown, choice).new
    assert rows(s) == 2 * 2 * len(CRITERIA)
def test_slot_orders_differ_between_annotators_and_pairwise_attention_shows_the_real_clip(tmp_path):
    study = fake_study(tmp_path, items=30, n=3, attention=1)
    orders = {who: [tuple(v["video"] for v in VoteStore.slot_order(study, who, i, "best_of_n")) for i in study.items]
              for who in ["alice", "bob"]}
    assert orders["alice"] != orders["bob"]
    assert VoteStore.item_order(study, "alice") != VoteStore.item_order(study, "bob")
    for who in ["alice", "bob", "carol"]:
        pair = [v["video"] for v in VoteStore.slot_order(study, who, "030", "pairwise")]
        assert "30-real.mp4" in pair and len(set(pair)) == 2


# voting
def test_a_second_submit_stores_nothing_and_says_when_the_first_was_stored(store, tmp_path):
    study = fake_study(tmp_path)
    shown = store.next_item(study, "alice")
    before = store.revision(study)
    first = vote(store, study, "alice", shown, 1)
    after = store.revision(study)
    assert first.new and after != before and store.revision("another-study") == 0
    again = vote(store, study, "alice", shown, 2)  # a second tab, or a replay: the first answer stands
    assert not again.new and again.first_voted_at == first.first_voted_at
    assert store.revision(study.id) == after  # nothing landed
    votes = store.votes()
    assert len(votes) == len(CRITERIA) and set(votes["choice"]) == {"1"} and set(votes["criterion"]) == set(CRITERIA)
    assert [s["video"] for s in votes.loc[0, "shown"]] == list(shown.videos)
    assert {"method", "steps", "video"} == set(votes.loc[0, "shown"][0])
    assert len(set(votes["voted_at"])) == 1  # one transaction, one time


def test_concurrent_submits_of_one_item_store_it_once(store, tmp_path):
    study = fake_study(tmp_path)
    shown = store.next_item(study, "alice")
    ready(store, study, "alice", shown)
    results = []

    def cast():
        results.append(store.submit(study, "alice", shown.item, "best_of_n", dict.fromkeys(CRITERIA, 0), shown.videos,
                                    min_view_s=0).new)

    threads = [threading.Thread(target=cast) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [False] * 7 + [True] and rows(store) == len(CRITERIA)


TRIGGERS = {"sqlite": ["CREATE TRIGGER boom BEFORE INSERT ON votes WHEN NEW.criterion = 'image_alignment' "
                       "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"],
            "postgres": ["CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.criterion = "
                         "'image_alignment' THEN RAISE EXCEPTION 'disk on fire'; END IF; RETURN NEW; END $$",
                         "CREATE TRIGGER boom BEFORE INSERT ON votes FOR EACH ROW EXECUTE FUNCTION boom()"]}


def test_a_submit_is_one_transaction_a_failure_on_its_last_criterion_stores_nothing(store, tmp_path):
    study = fake_study(tmp_path)
    assert CRITERIA[-1] == "image_alignment"  # the last of the item's rows fails, after the others were written
    backend = "sqlite" if isinstance(store.location, Path) else "postgres"
    sql(store, *TRIGGERS[backend])
    shown = store.next_item(study, "alice")
    with pytest.raises(Exception, match="disk on fire"):
        vote(store, study, "alice", shown, 0)
    assert rows(store) == 0 and store.revision(study) == 0
    assert store.next_item(study, "alice") == shown  # still the item to vote
    sql(store, "DROP TRIGGER boom" + " ON votes" * (backend == "postgres"))
    assert vote(store, study, "alice", shown, 0).new and rows(store) == len(CRITERIA)


def test_invalid_submits_store_nothing(store, tmp_path):
    study = fake_study(tmp_path)
    shown = store.next_item(study, "alice")
    ready(store, study, "alice", shown)
    other = next(i for i in study.items if i != shown.item)
    every = dict.fromkeys(CRITERIA, 0)
    bad = [
        dict(item="999"),                                                 # unknown item
        dict(choices={**every, "sharpness": 0}),                          # unknown criterion
        dict(choices={c: 0 for c in CRITERIA[:2]}),                       # a criterion missing
        dict(mode="trio"),                                                # unknown mode
        dict(videos=("elsewhere.mp4",) + shown.videos[1:]),               # a video not shown to alice
        dict(videos=tuple(reversed(shown.videos))),                       # not in the order shown
        dict(choices={**every, "frame_quality": "elsewhere.mp4"}),
        dict(choices={**every, "image_alignment": 3}),                    # no such slot
        dict(choices={**every, "image_alignment": True}),
        dict(mode="pairwise"),                                            # never served in that mode
        dict(item=other),                                                 # never served to alice
        dict(annotator="mallory"),                                        # unknown annotator
    ]
    for change in bad:
        args = dict(study=study, annotator="alice", item=shown.item, mode="best_of_n", choices=every,
                    videos=shown.videos, min_view_s=0) | change
        with pytest.raises(ValueError) as e:
            store.submit(**args)
        assert not isinstance(e.value, NotReady) and "\n" not in str(e.value)
    assert rows(store) == 0
    pair = store.next_item(study, "alice", "pairwise")
    with pytest.raises(ValueError, match="pairwise choice"):
        vote(store, study, "alice", pair, 0)
    assert rows(store) == 0
    # a best-of-N choice may name the video instead of the slot
    assert vote(store, study, "alice", shown, shown.videos[2]).new
    assert set(store.votes()["choice"]) == {"2"}


def test_the_play_gate_wants_every_video_loaded_after_serving_and_its_duration_passed(store, tmp_path):
    study = fake_study(tmp_path, frames=80)  # videos of 10 s
    order = VoteStore.item_order(study, "alice")
    early = VoteStore.slot_order(study, "alice", order[0], "pairwise")[0]["video"]
    store.record_fetch(study, "alice", early)  # fetched before the item was served: does not count
    shown = store.next_item(study, "alice", "pairwise")
    submit = dict(study=study, annotator="alice", item=shown.item, mode="pairwise",
                  choices=dict.fromkeys(CRITERIA, "A"), videos=shown.videos)
    with pytest.raises(NotReady, match="^videos A, B were not loaded$"):
        store.submit(**submit)
    store.record_fetch(study, "bob", shown.videos[1])  # another annotator's fetch does not count either
    store.record_fetch(study, "alice", shown.videos[0])
    with pytest.raises(NotReady, match="^video B was not loaded$"):
        store.submit(**submit)
    store.record_fetch(study, "alice", shown.videos[1])
    with pytest.raises(NotReady, match=r"^play the videos to the end: (9\.\d|10\.0) s left$"):
        store.submit(**submit)  # the default: the manifest's frames / fps
    with pytest.raises(NotReady, match=r"^play the videos to the end: (59\.\d|60\.0) s left$"):
        store.submit(**submit, min_view_s=60)
    assert rows(store) == 0
    time.sleep(max(0.0, 0.3 - (time.time() - shown.served_at.timestamp())) + 0.02)
    assert store.submit(**submit, min_view_s=0.3).new and rows(store) == len(CRITERIA)
    bob = store.next_item(study, "bob")  # best of N names its videos by number, from 1
    submit = dict(study=study, annotator="bob", item=bob.item, mode="best_of_n", choices=dict.fromkeys(CRITERIA, 0),
                  videos=bob.videos, min_view_s=0)
    with pytest.raises(NotReady, match="^videos 1, 2, 3 were not loaded$"):
        store.submit(**submit)
    store.record_fetch(study, "bob", bob.videos[0])
    store.record_fetch(study, "bob", bob.videos[2])
    with pytest.raises(NotReady, match="^video 2 was not loaded$"):
        store.submit(**submit)


def test_a_video_fetched_since_the_first_serve_counts_after_a_switch_of_mode(store, tmp_path):
    """A browser does not fetch again a video it holds: the item pending in best of N, served anew in pairwise,
    counts the fetches made since it was first served."""
    study = fake_study(tmp_path)
    first = store.next_item(study, "alice", "best_of_n")
    for video in first.videos:
        store.record_fetch(study, "alice", video)
    pair = store.next_item(study, "alice", "pairwise")
    assert pair.item == first.item and set(pair.videos) <= set(first.videos)
    assert store.submit(study, "alice", pair.item, "pairwise", dict.fromkeys(CRITERIA, "A"), pair.videos,
                        min_view_s=0).new


def test_fetches_of_unknown_videos_or_annotators_are_refused(store, tmp_path):
    study = fake_study(tmp_path)
    with pytest.raises(ValueError, match="'manifest.json': not a video of study study-test"):
        store.record_fetch(study, "alice", "manifest.json")
    with pytest.raises(ValueError, match="'mallory': unknown"):
        store.record_fetch(study, "mallory", "0-ccd.mp4")


# reading
def test_votes_export_to_csv_with_the_chosen_method(store, tmp_path, capsys):
    study = fake_study(tmp_path)
    vote(store, study, "alice", store.next_item(study, "alice"), 1, app_version="0.1.0")
    pshown = store.next_item(study, "bob", "pairwise")
    ready(store, study, "bob", pshown)
    store.submit(study, "bob", pshown.item, "pairwise", dict(zip(CRITERIA, ["tie", "B", "A"])), pshown.videos,
                 min_view_s=0)
    out = store.export_csv(tmp_path / "out" / "votes.csv")
    df = pd.read_csv(out)
    assert len(df) == 6 and {"study", "annotator", "item", "criterion", "mode", "shown", "choice", "shown_at",
                             "voted_at", "app_version", "chosen_method", "chosen_steps"} <= set(df.columns)
    first = df.iloc[0]
    assert first["chosen_method"] == json.loads(first["shown"])[1]["method"] and first["app_version"] == "0.1.0"
    assert pd.isna(df.iloc[3]["chosen_method"])  # a tie chooses nothing
    assert export_votes(store.location, tmp_path / "again.csv").read_text() == out.read_text()
    where = tmp_path if isinstance(store.location, Path) else store.location  # the folder of votes.sqlite, or a URL
    assert cli(capsys, "study", "export", where, "--out", tmp_path / "cli.csv")[0] == 0
    assert (tmp_path / "cli.csv").read_text() == out.read_text()
    one_line_error(*cli(capsys, "study", "export", tmp_path / "none.sqlite", "--out", tmp_path / "x.csv"),
                   "none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()


def test_study_results_from_a_votes_database(store, tmp_path):
    study = fake_study(tmp_path, items=4, n=3, attention=1)
    assert study_results(store.votes(study), rounds=5).counted_votes == 0  # no votes: empty, not an error
    for who in ["alice", "bob"]:
        while (shown := store.next_item(study, who)) is not None:
            methods = {v["video"]: v["method"] for v in study.items[shown.item]["videos"]}
            vote(store, study, who, shown, next(k for k, v in enumerate(shown.videos)
                                                if methods[v] in ("swiftvideo", REAL)))
    res = study_results(store.votes(study), rounds=20)
    assert res.flagged == [] and res.counted_votes == 2 * 4 * 3
    for c in CRITERIA:
        part = res.strengths[res.strengths["criterion"] == c]
        assert part.iloc[0]["entrant"] == "swiftvideo@4"
    share = res.best_share.set_index(["criterion", "entrant"])["share"]
    assert share[("frame_quality", "swiftvideo@4")] == 1
    assert (res.agreement["agreement"] == 1).all() and (res.agreement["groups"] == 4).all()


def test_a_database_of_the_earlier_schema_keeps_its_votes_and_works(tmp_path):
    path = tmp_path / "votes.sqlite"
    old = votes_module.SCHEMA[:votes_module.SCHEMA.index("CREATE TABLE IF NOT EXISTS fetches")]
    with sqlite3.connect(path) as db:
        db.executescript(old.format(id="INTEGER PRIMARY KEY", blob="BLOB"))
        db.execute("INSERT INTO annotators VALUES ('alice', x'00', x'00', '{}', '2026-01-01T00:00:00.000+00:00')")
        db.execute("INSERT INTO votes (study, annotator, item, criterion, mode, shown, choice, shown_at, voted_at, "
                   "app_version) VALUES ('study-test', 'alice', '000', 'frame_quality', 'best_of_n', '[]', '0', "
                   "'2026-01-01T00:00:00.000+00:00', '2026-01-01T00:00:09.000+00:00', 'old')")
    db.close()
    store = open_store(path)
    store.add_annotator("alice", "pw")
    study = fake_study(tmp_path)
    assert store.check_login("alice", "pw") and store.items_left(study, "alice") == len(study.items) - 1
    shown = store.next_item(study, "alice")
    assert shown.item != "000" and vote(store, study, "alice", shown, 0).new and rows(store) == 1 + len(CRITERIA)


@pytest.mark.parametrize("where,error", [("mysql://db.example/votes", "expected a votes database file or a "
                                                                     "postgresql:// URL"),
                                         ("postgresql://bob:s3cret@/votes?host=/nowhere", "cannot open it as")])
def test_a_bad_store_url_is_refused_in_one_line_without_its_password(where, error):
    with pytest.raises(ValueError, match=error) as e:
        open_store(where)
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value) and where.split("//")[0] in str(e.value)


def test_a_folder_is_refused_as_the_votes_database(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}: is a folder; expected the votes database file"):
        open_store(tmp_path)

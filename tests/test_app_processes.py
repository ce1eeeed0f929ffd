"""Two annotators' app processes (`python app.py --users ... --votes postgresql://...`) on one PostgreSQL database,
and a SIGKILL of one of them mid-study (issue 36): annotators vote through both over HTTP as their pages do (login,
next item, every video fetched with their cookie, vote); those on the killed process log in to the other and go on.
Every acknowledged submit is stored exactly once and whole, and every item ends voted once per annotator."""
import importlib.util
import signal
import threading
from pathlib import Path

from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from workbench.study import load_study, open_store, read_votes

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments/toy/study"
ANNOTATORS = [f"ann{i}" for i in range(4)]
KILL_AFTER = 4          # acknowledged submits (all annotators) when the first process is killed


def bench_app():
    spec = importlib.util.spec_from_file_location("bench_app", ROOT / "bench/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_app_processes_on_one_postgres_database_and_a_sigkill_lose_no_vote(postgres_url, tmp_path):  # noqa: F811
    bench = bench_app()
    study = load_study(STUDY)
    video_s = study.manifest["video"]["frames"] / study.manifest["video"]["fps"]
    users = tmp_path / "users.txt"
    users.write_text("".join(f"{n}:pw-{n}-test\n" for n in ANNOTATORS))
    common = ["--users", str(users), "--votes", postgres_url, "--study", str(STUDY)]
    apps = [bench.start([*common, "--cache", str(tmp_path / f"cache{k}")]) for k in range(2)]
    store = open_store(postgres_url)
    acked, errors, killed = [], [], threading.Event()
    lock = threading.Lock()

    def annotate(name: str, first: int):
        url = apps[first][1]
        while True:
            try:
                page = bench.Page(url, name, f"pw-{name}-test")
                while store.items_left(study, name) > 0:
                    bench.one_item(page, video_s, len(study.criteria))    # next item, fetch, wait, vote
                    with lock:
                        acked.append(name)
                        if len(acked) == KILL_AFTER:
                            apps[0][0].send_signal(signal.SIGKILL)
                            killed.set()
                return
            except Exception as e:  # noqa: BLE001  the killed process: go on with the other one
                if not killed.is_set() or url == apps[1][1]:
                    errors.append(f"{name}: {e!r}")
                    return
                url = apps[1][1]

    threads = [threading.Thread(target=annotate, args=(n, i % 2)) for i, n in enumerate(ANNOTATORS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        for proc, _, _ in apps:
            bench.stop(proc)
    assert not errors and killed.is_set() and apps[0][0].returncode == -signal.SIGKILL
    votes = read_votes(postgres_url, study)
    keys = votes[["annotator", "item", "criterion", "mode"]].drop_duplicates()
    # every item voted once per annotator and whole: no acknowledged submit lost or doubled (and the one in flight
    # on the killed process either stored whole or served again by the survivor)
    assert len(keys) == len(votes) == len(ANNOTATORS) * len(study.items) * len(study.criteria)
    assert len(acked) >= len(ANNOTATORS) * len(study.items) - 2 and len(acked) > KILL_AFTER

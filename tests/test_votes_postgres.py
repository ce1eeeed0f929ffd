"""Several app processes on one votes database: two processes serve and vote the same annotators' items at once on
one PostgreSQL database (a server the tests start) and on one SQLite file, and one of them is SIGKILLed mid-run.
Every acknowledged submit is stored exactly once and whole, none is acknowledged as new twice, and the other
process finishes the study (the killed one's transaction left no lock behind)."""
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.test_votes import fake_study
from workbench.study import open_store, read_votes
from workbench.study.build import CRITERIA

ANNOTATORS = ["ann0", "ann1", "ann2", "ann3"]
ITEMS = 15
KILL_AT = 20  # acknowledged submits of both processes (of 60 in all) when one of them is SIGKILLed

# An app process as the votes store sees it: serve, fetch every video, submit; a line per acknowledged submit.
WORKER = """
import json, sys
from pathlib import Path
from workbench.study import Study, open_store
where, manifest, names = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
study = Study(manifest.parent, json.loads(manifest.read_text()))
store = open_store(where)
print("ready", flush=True)
sys.stdin.readline()
while names:
    for who in list(names):
        shown = store.next_item(study, who)
        if shown is None:
            names.remove(who)
            continue
        for video in shown.videos:
            store.record_fetch(study, who, video)
        done = store.submit(study, who, shown.item, "best_of_n", dict.fromkeys(shown.criteria, 0), shown.videos,
                            min_view_s=0)
        print(who, shown.item, int(done.new), flush=True)
"""


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_two_processes_vote_at_once_and_a_sigkill_of_one_loses_no_acknowledged_submit(backend, request, tmp_path):
    study = fake_study(tmp_path, items=ITEMS, attention=0)
    (tmp_path / "manifest.json").write_text(json.dumps(study.manifest))
    where = str(tmp_path / "votes.sqlite") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(where)
    for who in ANNOTATORS:
        store.add_annotator(who, "pw")
    cmd = [sys.executable, "-c", WORKER, where, str(tmp_path / "manifest.json"), ",".join(ANNOTATORS)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    victim, survivor = procs
    lines: list[list[tuple]] = [[], []]  # (annotator, item, new) per acknowledged submit, per process

    def read(k: int) -> None:
        for line in procs[k].stdout:
            lines[k].append(tuple(line.split()))

    try:
        for p in procs:
            assert p.stdout.readline() == "ready\n"
        readers = [threading.Thread(target=read, args=(k,)) for k in range(2)]
        for p, r in zip(procs, readers):  # both start voting at the same moment
            r.start()
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = time.monotonic() + 300
        while len(lines[0]) + len(lines[1]) < KILL_AT and time.monotonic() < deadline:
            time.sleep(0.005)
        assert survivor.poll() is None and victim.poll() is None  # killed mid-run, the other still voting
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        survivor.wait(timeout=300)
        [r.join() for r in readers]
    finally:
        [p.kill() for p in procs if p.poll() is None]
    assert survivor.returncode == 0
    acks = lines[0] + lines[1]
    votes = read_votes(where)
    per_item = votes.groupby(["annotator", "item", "mode"]).size()
    assert len(per_item) == len(ANNOTATORS) * ITEMS and (per_item == len(CRITERIA)).all()  # all stored, all whole
    assert not votes.duplicated(["annotator", "item", "criterion", "mode"]).any()
    new = [(who, item) for who, item, is_new in acks if is_new == "1"]
    assert len(new) == len(set(new)) and {(who, item) for who, item, _ in acks} <= set(per_item.droplevel("mode").index)
    assert len(new) >= len(per_item) - 1  # at most one judgement committed by the victim and never acknowledged
    if backend == "sqlite":
        with sqlite3.connect(where) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()

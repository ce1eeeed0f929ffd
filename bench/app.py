"""The app's start-up time and its vote path under load, as one JSON object (a benchmark, not a test).

    python bench/app.py [--annotators 20] [--submits 17] [--kill-after 0.5] [--port 7870]

1. start-up: `python app.py` (review mode) until its page is served, in seconds.
2. load: N annotators, each its own gradio_client session against `python app.py --users ...` on loopback, go
   through the Study tab's API as the page does (next_item, played_i for every video, vote: 3 judgements a
   submit). When `kill-after` of all submits are acknowledged the app is killed with SIGKILL and restarted on the
   same port and database; every client reconnects and goes on. Then every acknowledged submit must be stored
   exactly once: no row twice (the UNIQUE key), no acknowledged judgement missing. p50/p95 of a vote call.
"""
from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEST = "best of N (the paper's protocol)"
PAIRWISE = "pairwise arena (A/B)"


def start(args: list[str], port: int) -> tuple[subprocess.Popen, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError("the app did not start")
            time.sleep(0.1)


def annotator(name: str, password: str, url: str, submits: int, acked: list, latencies: list, stop) -> None:
    """Vote `submits` times (best of N, then pairwise when those items run out), reconnecting after a kill."""
    from gradio_client import Client
    client, mode, done = None, BEST, 0
    while done < submits and not stop.is_set():
        try:
            if client is None:
                client = Client(url, auth=(name, password), verbose=False)
            served = client.predict(mode, api_name="/next_item")
            if str(served[0]).startswith("All items"):   # the progress text of an exhausted mode
                if mode == PAIRWISE:
                    return
                mode = PAIRWISE
                continue
            for i in range(4 if mode == BEST else 2):
                client.predict(api_name=f"/played_{i}")
            answer = "1" if mode == BEST else "A"
            t0 = time.perf_counter()
            client.predict(answer, answer, answer, api_name="/vote")
            latencies.append(time.perf_counter() - t0)
            acked.append(name)
            done += 1
        except Exception:  # noqa: BLE001  the app was killed: reconnect once it is back
            client = None
            time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--submits", type=int, default=17, help="submits per annotator (3 judgements each)")
    ap.add_argument("--kill-after", type=float, default=0.5, help="share of all submits before the SIGKILL")
    ap.add_argument("--port", type=int, default=7870)
    args = ap.parse_args()
    out = {}
    proc, out["startup_s"] = start([], args.port)
    proc.terminate()
    proc.wait()

    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    users = [(f"ann{i:02d}", f"pw-{i:02d}-bench") for i in range(args.annotators)]
    (tmp / "users.txt").write_text("".join(f"{u}:{p}\n" for u, p in users))
    app_args = ["--users", str(tmp / "users.txt"), "--votes", str(tmp / "votes.sqlite"), "--cache", str(tmp)]
    proc, _ = start(app_args, args.port)
    url, acked, latencies, stop = f"http://127.0.0.1:{args.port}/", [], [], threading.Event()
    threads = [threading.Thread(target=annotator, args=(u, p, url, args.submits, acked, latencies, stop))
               for u, p in users]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    total = args.annotators * args.submits
    while len(acked) < args.kill_after * total and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    acked_at_kill = len(acked)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc, out["restart_s"] = start(app_args, args.port)
    for t in threads:
        t.join(timeout=600)
    stop.set()
    wall = time.perf_counter() - t0
    proc.terminate()
    proc.wait()

    db = sqlite3.connect(tmp / "votes.sqlite")
    rows = db.execute("SELECT annotator, COUNT(*) FROM votes GROUP BY annotator").fetchall()
    keys = db.execute("SELECT COUNT(*), COUNT(DISTINCT study || annotator || item || criterion || mode) FROM votes"
                      ).fetchone()
    stored = dict(rows)
    acked_by = {u: acked.count(u) for u, _ in users}
    out.update({
        "annotators": args.annotators, "submits_acknowledged": len(acked), "acknowledged_before_kill": acked_at_kill,
        "judgements_stored": keys[0], "judgements_distinct": keys[1],
        "every_acknowledged_judgement_stored": all(stored.get(u, 0) >= 3 * n for u, n in acked_by.items()),
        "stored_not_acknowledged": sum(stored.get(u, 0) - 3 * n for u, n in acked_by.items()),
        "vote_p50_s": round(float(np.percentile(latencies, 50)), 4),
        "vote_p95_s": round(float(np.percentile(latencies, 95)), 4),
        "wall_s": round(wall, 1), "startup_s": round(out["startup_s"], 2), "restart_s": round(out["restart_s"], 2),
    })
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""The annotators' app under a crowd, as one JSON object (a benchmark, not a test).

    python bench/app.py [--annotators 20] [--items 4] [--flooders 8] [--backends sqlite postgres] [--study DIR]
                        [--out experiments/bench/app.json] [--tiny]

For each votes backend (an SQLite file; a PostgreSQL server started for the run by tests/postgres.py), `python
app.py --users ...` runs on loopback and annotators, each a session speaking gradio's queue protocol as the page
does (bench.app.Page), do for every item what the page does: next_item, fetch every shown video with their login cookie (as the browser does: the server's play gate counts
those fetches), play them one after another (wait N x their length since serving: the page asks for every video
played to its end; the server's gate alone would let a vote in after one length), vote (3 judgements, one submit).
  alone   one annotator, `items` items: the vote call's latency and the whole item's time (next item to vote acked)
  crowd   `annotators` at once (each starting at a random moment within one item's time), `items` items each: the
          same, and crowd/alone ratios of vote p95, item p50 and p95
  flood   the crowd again (`items` more each) while `flooders` threads post wrong passwords as fast as they are
          answered: vote and item times against the crowd's, login attempts made
Then integrity: every acknowledged submit stored exactly once. Also the review app's start-up: `python app.py` until
its page is served. `--tiny` (the tests run it): 2 annotators, 1 item, 1 flooder.
"""
from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEST = "best of N (the paper's protocol)"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str]) -> tuple[subprocess.Popen, str, float]:
    """`python app.py ARGS` on a free port until its page is served: the process, its URL, seconds taken."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None or time.perf_counter() - t0 > 180:
                proc.kill()
                raise RuntimeError(f"python app.py {' '.join(args)}: did not start")
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Page:
    """One annotator's browser tab as gradio's page talks to the server: a login cookie, a session, the queue (join,
    then the session's event stream until the event completes). Far lighter than gradio_client, whose threads took
    1.5 of the machine's 2 cores here with 20 sessions and starved the server being measured."""

    def __init__(self, url: str, name: str, password: str, config: dict | None = None):
        import httpx
        self.http = httpx.Client(base_url=url, timeout=120)
        self.http.post("/login", data={"username": name, "password": password}).raise_for_status()
        self.cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        self.session = secrets.token_hex(8)
        config = config or self.http.get("/config").json()
        kinds = {c["id"]: c["type"] for c in config["components"]}
        self.fns = {d["api_name"]: (i, [kinds[c] for c in d["inputs"]], [kinds[c] for c in d["outputs"]])
                    for i, d in enumerate(config["dependencies"]) if d.get("api_name")}
        self.config = config

    def predict(self, api_name: str, *values) -> list:
        """The event's outputs (gr.State ones as None); RuntimeError with the server's message if it raised."""
        fn, inputs, _ = self.fns[api_name]
        given = iter(values)
        data = [None if kind == "state" else next(given) for kind in inputs]
        self.http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn, "session_hash": self.session,
                                                       "event_data": None, "trigger_id": None}).raise_for_status()
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                msg = json.loads(line[5:]) if line.startswith("data:") else {}
                if msg.get("msg") == "process_completed":
                    if not msg.get("success"):
                        raise RuntimeError(str((msg.get("output") or {}).get("error")))
                    return msg["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream ended without a result")


def one_item(page: Page, video_s: float, answers: int) -> tuple[float, float, int]:
    """One item as the page does it: (whole item s, vote call s, early votes refused by the play gate)."""
    t0 = time.perf_counter()
    served = page.predict("next_item", BEST)
    served_at = time.perf_counter()
    urls = [v["value"]["url"] for v in served if isinstance(v, dict) and v.get("visible") and v.get("value")
            and str(v["value"].get("url", "")).endswith(".mp4")]
    for u in urls:
        page.http.get(u).raise_for_status()                              # as the browser loads each video
    time.sleep(max(0.0, served_at + len(urls) * video_s - time.perf_counter()))   # played one after another
    refused = 0
    while True:
        t_vote = time.perf_counter()
        try:
            page.predict("vote", *["1"] * answers)
            break
        except RuntimeError as e:  # the gate's "0.1 s left" (our clock started after the server's)
            if "s left" not in str(e) or refused > 50:
                raise
            refused += 1
            time.sleep(0.05)
    done = time.perf_counter()
    return done - t0, done - t_vote, refused


def annotate(page: Page, name: str, items: int, video_s: float, answers: int, out: list, acked: list,
             go: threading.Event) -> None:
    go.wait()
    # a crowd's annotators start at their own moments: all at one instant, with identical item times, they would
    # stay in step and measure a burst of every vote at once, not a crowd (seeded: the same offsets every run)
    time.sleep(np.random.default_rng(list(name.encode())).uniform(0, 4 * video_s + 0.5))
    for _ in range(items):
        item_s, vote_s, refused = one_item(page, video_s, answers)
        out.append((item_s, vote_s, refused))
        acked.append(name)


def flood(url: str, stop_flood: threading.Event, attempts: list) -> None:
    """Wrong passwords posted to /login as fast as they are answered, until told to stop."""
    n = 0
    while not stop_flood.is_set():
        form = urllib.parse.urlencode({"username": f"guess{n % 40:02d}", "password": f"guess-{n}"}).encode()
        try:
            urllib.request.urlopen(urllib.request.Request(f"{url}/login", data=form), timeout=60)
        except urllib.error.HTTPError:
            pass
        attempts.append(time.perf_counter())
        n += 1


def summary(rows: list[tuple[float, float, int]]) -> dict:
    items, votes = [r[0] for r in rows], [r[1] for r in rows]
    pct = lambda xs, q: round(float(np.percentile(xs, q)), 4)  # noqa: E731
    return {"n": len(rows), "vote_p50_s": pct(votes, 50), "vote_p95_s": pct(votes, 95), "item_p50_s": pct(items, 50),
            "item_p95_s": pct(items, 95), "early_votes_refused": sum(r[2] for r in rows)}


def phase(url: str, clients: dict, items: int, video_s: float, answers: int, flooders: int = 0) -> dict:
    """Every client annotates `items` items at once (with `flooders` login flooders): the summary."""
    rows, acked, go, stop_flood, attempts = [], [], threading.Event(), threading.Event(), []
    threads = [threading.Thread(target=annotate, args=(page, n, items, video_s, answers, rows, acked, go))
               for n, page in clients.items()]
    floods = [threading.Thread(target=flood, args=(url, stop_flood, attempts)) for _ in range(flooders)]
    for t in threads + floods:
        t.start()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop_flood.set()
    for t in floods:
        t.join()
    out = {**summary(rows), "wall_s": round(wall, 2), "acked": len(acked)}
    if flooders:
        out.update(login_attempts=len(attempts), login_attempts_per_s=round(len(attempts) / wall, 1))
    return out


def backend(votes: str, study_dir: Path, tmp: Path, args) -> dict:
    """alone, crowd and flood against one votes backend; their ratios; integrity."""
    from workbench.study import load_study, open_store
    study = load_study(study_dir)
    video_s = study.manifest["video"]["frames"] / study.manifest["video"]["fps"]
    answers = len(study.criteria)
    names = ["solo", *[f"ann{i:02d}" for i in range(args.annotators)]]
    users = tmp / "users.txt"
    users.write_text("".join(f"{n}:pw-{n}-bench\n" for n in names))
    proc, url, start_s = start(["--users", str(users), "--votes", votes, "--cache", str(tmp / "cache"),
                                "--study", str(study_dir)])
    try:
        solo = {"solo": Page(url, "solo", "pw-solo-bench")}
        crowd = {n: Page(url, n, f"pw-{n}-bench", solo["solo"].config) for n in names[1:]}
        out = {"start_s": round(start_s, 2), "alone": phase(url, solo, args.items, video_s, answers),
               "crowd": phase(url, crowd, args.items, video_s, answers),
               "flood": phase(url, crowd, args.items, video_s, answers, args.flooders)}
    finally:
        stop(proc)
    ratio = lambda a, b, k: round(out[a][k] / out[b][k], 2)  # noqa: E731
    out["crowd_over_alone"] = {k: ratio("crowd", "alone", k) for k in ("vote_p95_s", "item_p50_s", "item_p95_s")}
    out["flood_over_crowd"] = {k: ratio("flood", "crowd", k) for k in ("vote_p50_s", "vote_p95_s", "item_p95_s")}
    votes_df = open_store(votes).votes(study)
    acked = out["alone"]["acked"] + out["crowd"]["acked"] + out["flood"]["acked"]
    keys = votes_df[["annotator", "item", "criterion", "mode"]].drop_duplicates()
    out["integrity"] = {"submits_acked": acked, "judgements_stored": len(votes_df), "distinct": len(keys),
                        "stored_once": len(votes_df) == len(keys) == answers * acked}
    return out


def postgres_url(tmp: Path) -> str | None:
    from tests.postgres import binaries, new_database, start_postgres
    return new_database(start_postgres(tmp)) if binaries() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--items", type=int, default=4, help="items per annotator and phase (crowd and flood: 2x this)")
    ap.add_argument("--flooders", type=int, default=8, help="threads posting wrong passwords during the flood")
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--study", default=str(ROOT / "experiments/toy/study"))
    ap.add_argument("--out", default=str(ROOT / "experiments/bench/app.json"))
    ap.add_argument("--tiny", action="store_true", help="2 annotators, 1 item, 1 flooder (the tests' run)")
    args = ap.parse_args()
    if args.tiny:
        args.annotators, args.items, args.flooders = 2, 1, 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    proc, _, startup = start(["--cache", str(tmp / "review-cache"), "--votes", str(tmp / "review.sqlite")])
    stop(proc)
    out = {"startup_s": round(startup, 2), "annotators": args.annotators, "items": args.items,
           "flooders": args.flooders, "study": str(args.study)}
    for name in args.backends:
        (tmp / name).mkdir()
        votes = str(tmp / name / "votes.sqlite") if name == "sqlite" else postgres_url(tmp / name)
        out[name] = backend(votes, Path(args.study), tmp / name, args) if votes else "no PostgreSQL binaries"
    text = json.dumps(out, indent=1)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

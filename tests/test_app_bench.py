"""bench/app.py in its tiny mode: it runs end to end against both votes backends and reports what it promises (the
crowd/alone ratios, the login flood's effect, every acknowledged submit stored once). No assertion on time."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_app_bench_runs_tiny_with_sqlite_and_postgres(tmp_path):
    from tests.postgres import binaries
    backends = ["sqlite", "postgres"] if binaries() else ["sqlite"]  # CI installs PostgreSQL (.ci/run)
    out = tmp_path / "app.json"
    r = subprocess.run([sys.executable, "bench/app.py", "--tiny", "--out", str(out), "--backends", *backends],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(r.stdout) == report and report["startup_s"] > 0
    for name in backends:
        b = report[name]
        assert b["integrity"]["stored_once"] and b["integrity"]["submits_acked"] == 5   # 1 alone + 2 + 2
        assert set(b["crowd_over_alone"]) == {"vote_p95_s", "item_p50_s", "item_p95_s"}
        assert b["flood"]["login_attempts"] > 0 and "vote_p95_s" in b["flood_over_crowd"]

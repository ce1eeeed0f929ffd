"""`python -m workbench results`: tables rendered from results.csv files, and the shipped RESULTS.md current."""
import re

import numpy as np
import pandas as pd

from workbench.__main__ import main
from workbench.eval.results_doc import render_table


def results_csv(path):
    """Two models x two step counts x three seeds; FVD of model a at 1 step is 100, 110, 120 over the seeds."""
    rows = []
    for method in ("a", "b"):
        for steps in (1, 2):
            for seed in range(3):
                rows.append({"method": method, "steps": steps, "nfe": steps, "seed": seed, "num": 4,
                             "fvd": 100.0 + 10 * seed + (method == "b") + steps, "psnr": 30.0 - seed,
                             "solid": 0.5 + 0.1 * seed, "subject_consistency": 0.9, "wobble": 0.25 * seed,
                             "fvd_variant": "toy-fvd@test | 4 videos"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_table_is_mean_and_std_over_seeds_with_every_metric_column(tmp_path):
    table = render_table(str(results_csv(tmp_path / "results.csv")))
    assert "| a | 1 | 1 | 111.0 ± 10.00 |" in table          # FVD: mean of 101, 111, 121 and their std
    assert "0.600 ± 0.100" in table and "29.00 ± 1.000" in table  # solid, PSNR (which got worse with the seed)
    for title in ("FVD", "PSNR", "solid", "subject consistency", "wobble"):  # wobble: no known layout, still shown
        assert f" {title} |" in table, title
    only = render_table(str(tmp_path / "results.csv"), methods=["b"], steps=[2], columns=["solid"])
    assert only.splitlines()[2:] == ["| b | 2 | 2 | 0.600 ± 0.100 |"]


def test_stage_changes_count_only_what_moves_beyond_the_spread(tmp_path, monkeypatch):
    """b against a: FVD (lower is better) +1 inside its std 10 is level; psnr, solid identical: level; `changes`
    renders it; a change beyond the spread is better or worse by the column's direction."""
    from workbench.eval.results_doc import render
    from workbench.eval.tables import stage_changes
    monkeypatch.chdir(tmp_path)
    df = pd.read_csv(results_csv(tmp_path / "results.csv"))
    text = stage_changes(df, ["a", "b"], [1])
    assert text.startswith("- **a -> b, 1 step**: better: none; worse: none; level: FVD, ") and "PSNR" in text
    df.loc[df.method == "b", "fvd"] -= 50                                    # b's FVD 50 lower, stds 10
    df.loc[df.method == "b", "psnr"] -= 5                                    # and its PSNR 5 dB lower, stds 1
    df.loc[df.method == "b", "wobble"] += 1                                  # no known direction
    assert stage_changes(df, ["a", "b"], [1]) == (
        "- **a -> b, 1 step**: better: FVD 111.0 -> 62.00; worse: PSNR 29.00 -> 24.00; moved: wobble 0.250 -> 1.250; "
        "level: subject consistency, solid.\n")
    tiny = df.assign(solid=np.where(df.method == "a", 0.9580, 0.9584))        # beyond std 0, hidden by 3 decimals
    assert "solid 0.9580 -> 0.9584;" in stage_changes(tiny, ["a", "b"], [1]).split("worse:")[0]
    df.to_csv("results.csv", index=False)
    (tmp_path / "t.md").write_text("<!-- changes: results.csv stages=a,b steps=1,2 -->\n")
    assert "- **a -> b, 2 steps**: better: FVD 112.0 -> 63.00;" in render("t.md")


def test_reproduction_counts_the_cells_a_rerun_moves_beyond_the_spread(tmp_path):
    """bench/reproduce.py's rule: every (method, steps, column) both tables hold, s/clip left out; a cell is beyond
    the spread when the means differ by more than the larger seed-std."""
    from workbench.eval.tables import reproduction
    shipped = pd.read_csv(results_csv(tmp_path / "results.csv")).assign(sec_per_clip=1.0)
    fresh = shipped.assign(sec_per_clip=9.0)
    fresh.loc[fresh.method == "a", "fvd"] += 5                                # inside FVD's std 10
    fresh.loc[(fresh.method == "b") & (fresh.steps == 2), "psnr"] -= 3       # beyond PSNR's std 1
    fresh = fresh[~((fresh.method == "b") & (fresh.steps == 1))]              # a row the rerun lacks: not counted
    out = reproduction(shipped, fresh)
    assert out["cells"] == 3 * 5 and out["within_spread"] == 14                # fvd, psnr, solid, subject, wobble
    assert out["beyond_spread"] == [{"method": "b", "steps": 2, "column": "psnr", "shipped": 29.0, "fresh": 26.0,
                                     "spread": 1.0}]
    import subprocess
    import sys
    from pathlib import Path
    for bad in (tmp_path / "missing.csv", Path(__file__)):                   # no file; not a results.csv
        run = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench/reproduce.py"), "--shipped",
                              str(tmp_path / "results.csv"), "--fresh", str(bad)], capture_output=True, text=True)
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and str(bad) in run.stderr, run.stderr


def test_the_command_renders_a_template_and_check_tells_when_it_is_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results_csv(tmp_path / "results.csv")
    (tmp_path / "t.md").write_text("# Doc\n\nProse.\n\n<!-- table: results.csv steps=2 columns=fvd,psnr -->\n")
    (tmp_path / "shipped.md").write_text("| x | 1 |\n")
    (tmp_path / "u.md").write_text("<!-- include: shipped.md -->\n")
    assert main(["results", "--template", "t.md", "--out", "doc.md"]) == 0
    doc = (tmp_path / "doc.md").read_text()
    assert "Rendered from `results.csv`, steps 2:" in doc and "| a | 2 | 2 | 112.0 ± 10.00 | 29.00 ± 1.000 |" in doc
    assert "| a | 1 |" not in doc
    assert main(["results", "--template", "t.md", "--out", "doc.md", "--check"]) == 0
    (tmp_path / "doc.md").write_text(doc.replace("112.0", "112.1"))
    capsys.readouterr()
    assert main(["results", "--template", "t.md", "--out", "doc.md", "--check"]) == 1
    assert "doc.md" in capsys.readouterr().err
    assert main(["results", "--template", "u.md", "--out", "v.md"]) == 0
    assert "| x | 1 |" in (tmp_path / "v.md").read_text()


def test_bad_markers_name_the_template_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results_csv(tmp_path / "results.csv")
    for marker, fragment in [("<!-- table: missing.csv -->", "missing.csv"),
                             ("<!-- table: results.csv steps=3 -->", "no steps 3"),
                             ("<!-- table: results.csv methods=c -->", "no method c"),
                             ("<!-- table: results.csv colour=red -->", "unknown option 'colour'"),
                             ("<!-- table results.csv -->", "malformed marker"),
                             ("<!-- changes: results.csv steps=1 -->", "changes takes stages=")]:
        (tmp_path / "t.md").write_text(f"text\n{marker}\n")
        assert main(["results", "--template", "t.md", "--out", "doc.md"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err and "t.md:2" in err, err
        assert not (tmp_path / "doc.md").exists()


def test_the_shipped_results_doc_is_what_its_template_renders(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    assert main(["results", "--check"]) == 0, capsys.readouterr().err


def test_the_readme_quotes_results_numbers_exactly(root):
    """The README's headline numbers ('mean ± std') are strings of the rendered RESULTS.md."""
    quoted = re.findall(r"\d[\d.]* ± \d[\d.]*\d", (root / "README.md").read_text())
    results = (root / "experiments/toy/RESULTS.md").read_text()
    assert quoted and [q for q in quoted if q not in results] == []

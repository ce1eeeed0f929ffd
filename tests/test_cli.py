"""The command line end to end on the micro preset: train -> sample (mp4 + sheet) -> eval (table)."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.data.io import read_frames


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory, request):
    root = request.config.rootpath
    out = tmp_path_factory.mktemp("cli") / "run"
    r = subprocess.run([sys.executable, "-m", "workbench", "train", "experiments/micro/teacher.yaml", "--out", str(out),
                        "--set", "train.steps=4"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return root, out


def test_sample_writes_mp4_and_contact_sheet(micro_run, tmp_path):
    root, run = micro_run
    r = subprocess.run([sys.executable, "-m", "workbench", "sample", str(run), "--steps", "2", "--num", "3",
                        "--seed", "1", "--out", str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    clips = sorted(tmp_path.glob("clip-*.mp4"))
    assert len(clips) == 3 and (tmp_path / "contact_sheet.png").stat().st_size > 0
    assert read_frames(clips[0]).shape == (4, 192, 192, 3)  # the micro preset's 4 frames of 16 px, enlarged 12x
    assert "caption" in (tmp_path / "captions.yaml").read_text()


def test_sample_rejects_a_missing_checkpoint(micro_run, tmp_path):
    root, _ = micro_run
    r = subprocess.run([sys.executable, "-m", "workbench", "sample", str(tmp_path / "nope"), "--out", str(tmp_path)],
                       cwd=root, capture_output=True, text=True)
    assert r.returncode == 2 and "nope" in r.stderr and r.stderr.strip().count("\n") == 0


def test_eval_writes_a_table_per_steps_and_seed(micro_run, tmp_path):
    root, run = micro_run
    r = subprocess.run([sys.executable, "-m", "workbench", "eval", str(run), "--steps", "1,2", "--num", "2",
                        "--seeds", "0,1", "--out", str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(tmp_path / "results.csv")
    assert sorted(zip(df.steps, df.seed)) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {"solid", "shape_iou", "sharpness", "first_frame_mae", "sec_per_clip"} <= set(df.columns)
    assert "± " in (tmp_path / "table.md").read_text()


def test_same_seed_same_samples(micro_run):
    """Sampling is a pure function of (weights, clip, seed, steps)."""
    from workbench.generate import generate, test_batch
    from workbench.runs import load_model
    _, run = micro_run
    model = load_model(run)
    batch = test_batch(model.config, 2)
    a, b = generate(model, batch, 2, seed=5), generate(model, batch, 2, seed=5)
    assert a.equal(b) and not a.equal(generate(model, batch, 2, seed=6))


def test_exported_model_folder_samples_like_the_run(micro_run, tmp_path):
    from workbench.export import export_model
    from workbench.generate import generate, test_batch
    from workbench.runs import load_model
    _, run = micro_run
    folder = export_model(run, tmp_path / "model", "float16")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.yaml", "metrics.jsonl", "export.json"}
    m32, m16 = load_model(run), load_model(folder)
    batch = test_batch(m32.config, 2)
    a, b = generate(m32, batch, 2), generate(m16, batch, 2)
    assert (a - b).abs().max() < 2e-2  # fp16 storage of the same EMA weights


def test_a_model_saved_with_a_sampler_is_sampled_with_it_by_sample_and_eval(tmp_path, root):
    """sample.sampler in the run's config reaches `sample` and `eval` without a flag."""
    from PIL import Image

    from workbench.data.io import contact_sheet
    from workbench.data.synthetic import to_uint8
    from workbench.generate import clip_noise, generate, test_batch
    from workbench.runs import load_model
    from workbench.sampling import consistency, schedule
    run = tmp_path / "run"
    cli = lambda *a: subprocess.run([sys.executable, "-m", "workbench", *map(str, a)], cwd=root,  # noqa: E731
                                    capture_output=True, text=True)
    r = cli("train", "experiments/micro/teacher.yaml", "--out", run, "--set", "train.steps=4",
            "--set", "sample.sampler=consistency")
    assert r.returncode == 0, r.stderr[-2000:]
    model = load_model(run)
    assert model.sampler == "consistency"
    batch = test_batch(model.config, 3)
    x0, cond = model.encoders.prepare(batch["video"], batch["caption"])
    by_hand = consistency(model.net, clip_noise(batch["seed"], tuple(x0.shape[1:]), 1), cond, schedule(2),
                          noise_sampler=lambda i: clip_noise(batch["seed"], tuple(x0.shape[1:]), 1, draw=i + 1))
    ours = generate(model, batch, 2, seed=1)
    torch.testing.assert_close(ours, model.encoders.decode(by_hand))
    euler_model = load_model(run, ["sample.sampler=euler"])
    assert not generate(euler_model, batch, 2, seed=1).equal(ours)

    assert cli("sample", run, "--steps", "2", "--num", "3", "--seed", "1", "--out", tmp_path / "s").returncode == 0
    sheet = np.asarray(Image.open(tmp_path / "s" / "contact_sheet.png"))
    want = np.asarray(contact_sheet([to_uint8(v) for v in ours], ["0", "1", "2"]))
    assert np.array_equal(sheet, want)

    evals = {}
    for name, extra in (("saved", []), ("euler", ["--set", "sample.sampler=euler"])):
        r = cli("eval", run, "--steps", "2", "--num", "2", "--seeds", "1", "--cache", "", "--out", tmp_path / name, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        evals[name] = pd.read_csv(tmp_path / name / "results.csv")
    assert evals["saved"]["psnr"].iloc[0] != evals["euler"]["psnr"].iloc[0]


def test_run_api_reads_a_run_folder_without_knowing_its_layout(micro_run, tmp_path, monkeypatch):
    """workbench.runs.Run: config, metrics, checkpoints, weights, samples, eval tables; paths relative to the
    caller's working directory."""
    from workbench.runs import Run, load_model
    root, run = micro_run
    monkeypatch.chdir(run.parent)                     # a relative path works from wherever the caller is
    r = Run(run.name)
    assert r.config.name == "micro-teacher" and r.config.train.steps == 4
    assert list(r.metrics["step"]) == [2, 4] and "loss" in r.metrics
    assert [c.name for c in r.checkpoints] == ["step-000004"]
    assert r.weights == r.checkpoints[-1] / "model-ema.safetensors"   # the exported role's EMA
    assert [p.name for p in r.samples] == ["step-000004.png"]
    model = r.load_model()
    assert model.source == r.weights and model.sampler == "euler" and not model.net.training
    assert load_model(run.name).config.model.weights == str(r.weights)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        Run(tmp_path)


def test_compare_samples_toy_models_on_demand_and_leaves_wan_scale_ones_to_study_sets(tmp_path):
    """workbench.compare: same first frame and noise for every pick, content-hash videos, one strip; a model of the
    Wan preset is not offered for on-demand sampling."""
    import shutil

    import yaml

    from workbench.compare import choices, compare, parse_choice
    from workbench.runs import find_models
    models = find_models("experiments")
    picks = [parse_choice(c, models) for c in ("toy/teacher @ 2", "toy/ccd @ 2")]
    info, real, shown, strip = compare(picks, 5, 0, tmp_path / "cache")
    assert [s.label for s in shown] == ["toy/teacher, 2 steps", "toy/ccd, 2 steps"] and strip.is_file()
    assert len({real.video, *(s.video for s in shown)}) == 3 and all(len(s.video.stem) == 24 for s in shown)
    again = compare(picks, 5, 0, tmp_path / "cache")[2]
    assert [s.video for s in again] == [s.video for s in shown]               # cached, same content-hash names
    wan = tmp_path / "exp" / "wan"
    shutil.copytree("experiments/toy/ccd", wan)
    cfg = yaml.safe_load((wan / "config.yaml").read_text())
    cfg["model"]["preset"] = "wan2.1-fun-1.3b-inp"
    (wan / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert choices(find_models(tmp_path / "exp")) == []
    with pytest.raises(ValueError, match="unknown model choice"):
        parse_choice("wan @ 4", find_models(tmp_path / "exp"))

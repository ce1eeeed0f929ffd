"""Preference pairs and the pipeline command, end to end on the micro preset."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.__main__ import main
from workbench.config import ConfigError
from workbench.data.preferences import PreferenceDataset
from workbench.generate import generate_latents
from workbench.generate import test_batch as make_test_batch
from workbench.pipeline import load_pipeline, run_pipeline
from workbench.preferences import build_preferences
from workbench.runs import load_model


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The micro pipeline: teacher -> CCD -> CCD + DA -> TA 4v2 -> TA 2v1 -> evaluation."""
    out = tmp_path_factory.mktemp("pipeline")
    run_pipeline(load_pipeline("experiments/micro/swiftvideo.yaml"), out)
    return out


def test_pipeline_writes_every_stage_and_the_evaluation(pipeline_run):
    for stage in ("teacher", "ccd", "ccd_da", "ta1", "ta2"):
        assert (pipeline_run / stage / "model" / "model.safetensors").is_file()
    for stage in ("ta1", "ta2"):
        assert (pipeline_run / stage / "model" / "lora" / "pytorch_lora_weights.safetensors").is_file()
        rows = [json.loads(r) for r in (pipeline_run / stage / "metrics.jsonl").read_text().splitlines()]
        assert all("win_diff" in r for r in rows)
    meta = json.loads((pipeline_run / "ta2" / "preferences" / "pairs.json").read_text())["meta"]
    assert (meta["win_steps"], meta["lose_steps"]) == (2, 1) and meta["model"].endswith("ta1/model")
    ev = pipeline_run / "eval"
    for name in ("table.md", "results.csv", "fvd_vs_steps.html", "training_curves.html", "discriminator_logits.html",
                 "win_diff.html", "stages_2steps.png"):
        assert (ev / name).is_file(), name
    assert all(f"{s}: win_diff" in (ev / "win_diff.html").read_text() for s in ("ta1", "ta2"))
    table = (ev / "table.md").read_text()
    assert all(f"| {s} |" in table for s in ("teacher", "ccd", "ccd_da", "ta1", "ta2"))


def test_pipeline_skips_finished_stages(pipeline_run, capsys):
    stamp = {s: (pipeline_run / s / "model" / "model.safetensors").stat().st_mtime_ns for s in ("ccd", "ta2")}
    run_pipeline(load_pipeline("experiments/micro/swiftvideo.yaml", ["eval.seeds=[1]"]), pipeline_run)
    assert capsys.readouterr().out.count("done already") == 5
    assert all((pipeline_run / s / "model" / "model.safetensors").stat().st_mtime_ns == t for s, t in stamp.items())


def test_exported_ta_model_equals_its_checkpoint_with_lora(pipeline_run):
    """model.safetensors (LoRA merged) samples what the run's last checkpoint (base + LoRA) samples."""
    merged, ckpt = load_model(pipeline_run / "ta1" / "model"), load_model(pipeline_run / "ta1")
    assert merged.config.model.lora.rank == 0 and ckpt.config.model.lora.rank == 0  # merged on loading, too
    batch = make_test_batch(merged.config, 2)
    a, b = (generate_latents(m, batch, 2) for m in (merged, ckpt))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_preference_pairs_are_the_models_own_samples(pipeline_run, tmp_path, monkeypatch):
    model = pipeline_run / "ccd_da" / "model"
    out = build_preferences(model, tmp_path / "prefs", 5, 2, 1, batch_size=2, progress=False)
    ds = PreferenceDataset(out)
    assert len(ds) == 5 and ds.meta["shards"] == 3
    m = load_model(model)
    from workbench.data import build_dataset, collate
    clips = collate([build_dataset(m.config.data, "train")[i] for i in range(5)])
    clips["seed"] = list(range(5))
    win, lose = generate_latents(m, clips, 2), generate_latents(m, clips, 1)
    for i in range(5):
        it = ds[i]
        torch.testing.assert_close(it["winner"], win[i])
        torch.testing.assert_close(it["loser"], lose[i])
        assert torch.equal(it["first"], clips["video"][i, :, 0]) and it["caption"] == clips["caption"][i]
    real = build_preferences(model, tmp_path / "real", 2, winners="real", progress=False)
    torch.testing.assert_close(PreferenceDataset(real)[1]["winner"], clips["video"][1])  # pixel codec: x0 = clip
    with pytest.raises(FileExistsError):
        build_preferences(model, out, 5, progress=False)
    _dpo_paired_noise_is_the_pairs_own(m, out, real, monkeypatch)


def _dpo_paired_noise_is_the_pairs_own(m, pairs, real_pairs, monkeypatch):
    """dpo.noise=paired: x_t lies between each clip and the noise it was sampled from (x1 = clip_noise(seed, clip))."""
    import workbench.methods.dpo as dpo
    from workbench.methods import load_config
    from workbench.data import collate
    from workbench.generate import clip_noise
    from workbench.flow import interpolate
    from workbench.methods import TrainStep, build_method
    from workbench.models import build_backbone
    from workbench.sampling import get_sampler, schedule
    ds = PreferenceDataset(pairs)
    batch = collate([ds[i] for i in (1, 3)])
    x1 = clip_noise(batch["seed"], tuple(batch["winner"].shape[1:]), ds.meta["seed"])
    cond = m.encoders.condition(batch["first"], batch["caption"], batch["frames"][0])
    again = get_sampler("euler")(m.net, x1, cond, schedule(ds.meta["win_steps"], m.config.sample.shift))
    torch.testing.assert_close(again, batch["winner"])                  # this noise, sampled, gives the winner
    seen = []
    monkeypatch.setattr(dpo, "interpolate", lambda x0, n, t: seen.append(n) or interpolate(x0, n, t))
    for noise in ("paired", "fresh"):
        cfg = load_config("experiments/micro/dpo.yaml", ["data.preferences=''", f"dpo.noise={noise}"])
        net, enc = build_backbone(cfg.model)
        method = build_method(cfg, net, enc)
        with torch.no_grad():
            method.pair_errors(batch, TrainStep(0, torch.Generator().manual_seed(5), {"model": net}, frozenset()))
    assert torch.equal(seen[0], torch.cat([x1, x1])) and not torch.allclose(seen[1], seen[0])
    with pytest.raises(ValueError, match="dpo.noise: 'paired' needs sampled winners"):
        method.cfg.dpo.noise = "paired"
        method.pair_errors(collate([PreferenceDataset(real_pairs)[0]]), TrainStep(0, torch.Generator(), {"model": net},
                                                                                  frozenset()))


def test_bad_pipeline_and_preference_input(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("stages:\n  - {name: a, config: experiments/micro/ccd.yaml, init: nowhere}\n")
    with pytest.raises(ConfigError, match="stages\\[0\\].init"):
        load_pipeline(bad)
    gone = tmp_path / "g.yaml"  # a reused model that is missing, with no config to rebuild it: one line, exit 2
    gone.write_text(f"stages:\n  - {{name: teacher, reuse: {tmp_path}/shipped}}\n")
    assert main(["pipeline", str(gone), "--out", str(tmp_path / "gone")]) == 2
    assert f"{tmp_path}/shipped/model.safetensors not found" in capsys.readouterr().err
    assert main(["train", "experiments/micro/dpo.yaml", "--set", f"data.preferences={tmp_path}/none",
                 "--out", str(tmp_path / "run")]) == 2
    assert "pairs.json not found" in capsys.readouterr().err


def test_a_finished_stage_or_pair_set_made_otherwise_is_refused_not_reused(pipeline_run, capsys):
    """A stage whose config changed, or cached pairs made from other settings, give one line naming the keys."""
    from workbench.pipeline import Stage, run_stage
    from workbench.preferences import cached_preferences
    stage = Stage(name="ccd", config="experiments/micro/ccd.yaml", set=["train.lr=0.5"])
    with pytest.raises(ConfigError, match=r"stage ccd: .* was trained with another config \(.*train\.lr: .* -> 0\.5"):
        run_stage(stage, pipeline_run / "ccd", init=pipeline_run / "teacher" / "model")
    prefs = pipeline_run / "ta1" / "preferences"
    meta = json.loads((prefs / "pairs.json").read_text())["meta"]
    same = cached_preferences(pipeline_run / "ccd_da" / "model", prefs, meta["num_pairs"], meta["win_steps"],
                              meta["lose_steps"], meta["winners"], meta["seed"])
    assert same == prefs and "reused" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match=r"made otherwise \(num_pairs: 8 -> 9\)"):
        cached_preferences(pipeline_run / "ccd_da" / "model", prefs, 9, meta["win_steps"], meta["lose_steps"])
    with pytest.raises(FileExistsError, match=r"model: .* -> .*teacher/model.*weights"):
        cached_preferences(pipeline_run / "teacher" / "model", prefs, meta["num_pairs"], meta["win_steps"],
                           meta["lose_steps"])



def test_only_the_stages_a_trained_stage_starts_from_are_needed(tmp_path):
    """Table 1 reuses the shipped SwiftVideo: its TA round 1, which only the final round starts from, is skipped;
    without the shipped folder the whole chain is needed."""
    from workbench.pipeline import needed_stages

    def pipeline(final_reuse: str):
        text = f"""stages:
  - {{name: teacher, reuse: experiments/toy/teacher}}
  - {{name: ta1, config: experiments/micro/dpo.yaml, init: teacher}}
  - {{name: ta2, config: experiments/micro/dpo.yaml, init: ta1, reuse: {final_reuse}}}
  - {{name: lcm, config: experiments/micro/teacher.yaml, init: teacher}}
eval: {{models: [teacher, ta2, lcm]}}
"""
        (tmp_path / "p.yaml").write_text(text)
        return load_pipeline(tmp_path / "p.yaml")
    assert needed_stages(pipeline("experiments/toy/swiftvideo")) == {"teacher", "ta2", "lcm"}
    assert needed_stages(pipeline(str(tmp_path / "nowhere"))) == {"teacher", "ta1", "ta2", "lcm"}

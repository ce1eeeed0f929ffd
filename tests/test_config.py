import subprocess
import sys

import pytest
import yaml

from workbench.config import Config, ConfigError
from workbench.methods import load_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=1e-4", "data.toy.size=16", "train.sample_steps=[1,2]"])
    assert isinstance(cfg, Config)
    assert cfg.train.lr == 1e-4 and cfg.data.toy.size == 16 and cfg.train.sample_steps == (1, 2)


def test_every_shipped_config_loads(root):
    from workbench.pipeline import load_pipeline
    paths = [p for p in sorted((root / "experiments").rglob("*.yaml"))    # accelerate's own launch configs aside
             if "compute_environment" not in yaml.safe_load(p.read_text())]
    pipelines = [p for p in paths if "stages" in yaml.safe_load(p.read_text())]
    assert pipelines, "no pipeline config found"
    for path in paths:
        (load_pipeline if path in pipelines else load_config)(path)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "train.lrr: unknown key"),
    ("train.lr=abc", "train.lr: expected float"),
    ("train.steps=1.5", "train.steps: expected int"),
    ("data.toy.objects=[1]", "data.toy.objects: expected 2 items"),
    ("model=3", "model: expected a mapping"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "train.stepz" in str(e.value)


def test_cli_reports_bad_config_in_one_line(tmp_path, root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {}\n")
    r = subprocess.run([sys.executable, "-m", "workbench", "train", str(bad), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "trian: unknown key" in r.stderr and str(bad) in r.stderr


def test_cli_reports_missing_weights(tmp_path, root):
    r = subprocess.run([sys.executable, "-m", "workbench", "train", "experiments/micro/teacher.yaml",
                        "--out", str(tmp_path / "run"), "--set", "model.transformer_path=/nonexistent/wan"],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 2
    assert "model.transformer_path" in r.stderr and "/nonexistent/wan" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_prediction_must_fit_the_weights(tmp_path):
    """Weights trained as x0-predictors (their config.yaml says so) are refused under model.prediction=velocity."""
    from safetensors.torch import save_file

    from workbench.config import ModelConfig
    from workbench.models import build_backbone

    net, _ = build_backbone(ModelConfig(preset="toy"))
    save_file(net.transformer.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.yaml").write_text("model:\n  preset: toy\n  prediction: x0\n")
    weights = str(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.weights: .* trained with model.prediction=x0"):
        build_backbone(ModelConfig(preset="toy", weights=weights))
    assert build_backbone(ModelConfig(preset="toy", weights=weights, prediction="x0"))[0].prediction == "x0"


# --- a method's settings: declared in its file, built and checked at load -----------------------------------------

def test_the_method_sections_are_those_of_train_method(tmp_path):
    from workbench.config import to_dict
    cfg = load_config(None, ["train.method=osv", "lcm.grid=10", "pcm.phases=2"])   # pcm: another method's
    assert set(cfg.sections) == {"osv", "lcm", "adversarial"} and cfg.lcm.grid == 10 and cfg.osv.stage1_steps == 250
    with pytest.raises(AttributeError, match="config has no section 'pcm': train.method 'osv' reads osv, lcm"):
        cfg.pcm
    saved = to_dict(cfg)
    assert list(saved)[:7] == ["name", "out", "data", "model", "train", "sample", "distill"]
    assert {"osv", "lcm", "adversarial"} <= set(saved) and "pcm" not in saved and "sections" not in saved
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert load_config(tmp_path / "config.yaml") == cfg                             # a saved config round-trips


def test_a_config_saved_with_every_methods_section_still_loads(root):
    """Run folders saved before methods declared their settings hold every method's section: the others are
    checked and left out."""
    path = root / "experiments/toy/baselines/dmd2/config.yaml"
    assert {"lcm", "pcm", "dpo", "flow_matching"} <= set(yaml.safe_load(path.read_text()))
    cfg = load_config(path)
    assert set(cfg.sections) == {"dmd2"} and cfg.dmd2.student_every == 5


@pytest.mark.parametrize("override, message", [
    ("train.method=ccdd", "train.method: unknown method 'ccdd' (known: "),
    ("pcm.loss=l1", "pcm.loss: expected one of 'huber', 'l2', got 'l1'"),
    ("pcm.phases=5", "pcm.phases: 5 must divide pcm.grid (48)"),
    ("sections={}", "sections: unknown key"),
])
def test_a_bad_method_or_method_setting_is_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, ["train.method=pcm", override])


def test_a_hand_built_config_names_the_section_its_method_reads():
    from workbench.methods import build_method
    with pytest.raises(ValueError, match="flow_matching: the config has no such section"):
        build_method(Config(), None, None)


def test_a_low_layer_reads_one_section(tmp_path):
    from workbench.config import ModelConfig, load_section
    (tmp_path / "config.yaml").write_text("model: {prediction: x0}\npcm: {loss: l1}\n")   # other sections unread
    assert load_section(tmp_path / "config.yaml", "model", ModelConfig).prediction == "x0"
    (tmp_path / "config.yaml").write_text("model: {prediction: eps}\n")
    with pytest.raises(ConfigError, match="model.prediction: expected one of"):
        load_section(tmp_path / "config.yaml", "model", ModelConfig)

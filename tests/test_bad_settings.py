"""Settings refused when the config loads, never hours later: choices, finite numbers, values that cannot fit,
YAML that would blow up, every stage of a pipeline; and weights that hold no usable numbers."""
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_bad_inputs import MICRO, cli, one_line_error, run, snapshot  # noqa: F401 (run: a fixture)
from workbench import config
from workbench.methods import METHODS
from workbench.methods.base import TEACHER_DTYPES
from workbench.methods.parts import AdversarialSettings
from workbench.models import PRESETS
from workbench.models.wan import PRESETS as WAN_PRESETS
from workbench.models.jvp import TANGENT_MODES
from workbench.sampling import SAMPLERS


@pytest.fixture(autouse=True)
def _in_root(monkeypatch, root):
    monkeypatch.chdir(root)


def _choices(cls, key: str) -> set:
    return set(typing.get_args(typing.get_type_hints(cls)[key]))


def test_choice_types_are_the_registries():
    assert set(typing.get_args(config.Preset)) == set(PRESETS)
    assert set(config.WAN_PRESETS) == set(WAN_PRESETS)
    assert set(typing.get_args(config.SamplerName)) == set(SAMPLERS)
    assert _choices(config.DistillConfig, "jvp") == set(TANGENT_MODES)
    assert _choices(config.DistillConfig, "teacher_dtype") == set(TEACHER_DTYPES)
    distill = _choices(AdversarialSettings, "distill") - {"none"}     # DA adds its term to a method's distill_loss
    assert distill <= set(METHODS) and all(callable(getattr(METHODS[m], "distill_loss", None)) for m in distill)


def test_every_method_settings_section_is_checked_as_the_core_ones():
    """Each registered method's sections are dataclasses the loader can check field by field (no type it would
    refuse every value of), with defaults that pass their own RANGES and rules."""
    for name, method in METHODS.items():
        for section, cls in method.sections.items():
            config._check({}, cls, section)                              # the defaults load
            for key, tp in typing.get_type_hints(cls).items():
                if not key.isupper():
                    config._check(getattr(cls(), key), tp, f"{section}.{key}")


@pytest.mark.parametrize("override,fragment", [
    ("train.schedule=cosin", "train.schedule: expected one of 'constant', 'cosine', got 'cosin'"),
    ("sample.sampler=consistancy", "sample.sampler: expected one of 'euler', 'consistency', got 'consistancy'"),
    ("train.method=ccdd", "train.method: unknown method 'ccdd'"),
    ("distill.jvp=blockwize", "distill.jvp: expected one of 'blockwise'"),
    ("dpo.region=diff", "dpo.region: expected one of 'all', 'difference'"),
    ("pcm.loss=l1", "pcm.loss: expected one of 'huber', 'l2', got 'l1'"),       # another method's section: checked
    ("pcm.phases=5", "pcm.phases: 5 must divide pcm.grid (48)"),              # a rule across a section's fields
    ("cdm.min_steps=29", "cdm.min_steps: 29 must not exceed cdm.max_steps (28)"),
    ("dmd2.min_t=0.99", "dmd2.min_t: 0.99 must be below dmd2.max_t (0.98)"),
    ("lcm.grid_size=4", "lcm.grid_size: unknown key"),
    ("lcmm.grid=4", "lcmm: unknown key"),
    ("train.mixed_precision=no", "quote it"),                                 # YAML reads `no` as False
    ("train.ema_decay=.nan", "train.ema_decay: expected a finite number, got nan"),
    ("train.lr=.nan", "train.lr: expected a finite number"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("sample.shift=.nan", "sample.shift: expected a finite number"),
    ("distill.p_mean=-.inf", "distill.p_mean: expected a finite number"),
    ("train.batch_size=1000000000", "train.batch_size: 1000000000 clips a step, more than the train split holds"),
])
def test_a_bad_setting_is_refused_before_any_work(override, fragment, tmp_path, capsys):
    one_line_error(*cli(capsys, "train", MICRO, "--set", override, "--out", tmp_path / "run"), fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_sampling_setting_is_refused_by_sample_before_it_writes(run, tmp_path, capsys):  # noqa: F811
    one_line_error(*cli(capsys, "sample", run, "--set", "sample.shift=.nan", "--out", tmp_path / "s"),
                   "sample.shift: expected a finite number")
    assert list(tmp_path.iterdir()) == []


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    levels = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\ntrain:\n  sample_steps: *i\n")       # 9^9 items once expanded
    one_line_error(*cli(capsys, "train", bomb, "--out", tmp_path / "run"), str(bomb), "YAML aliases")
    one_line_error(*cli(capsys, "train", MICRO, "--set", "train.sample_steps=[&x 1, *x]", "--out", tmp_path / "r"),
                   "--set train.sample_steps", "YAML aliases")
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.yaml"]


def test_eval_num_beyond_the_test_split_names_the_flag(run, tmp_path, capsys):  # noqa: F811
    one_line_error(*cli(capsys, "eval", run, "--num", "1000000000", "--steps", "1", "--out", tmp_path / "e"),
                   "--num 1000000000: more test clips than", "data.test_size 8")
    assert list(tmp_path.iterdir()) == []


def test_data_export_beyond_the_disk_is_refused_after_one_clip(tmp_path, capsys):
    one_line_error(*cli(capsys, "data", "export", "--out", tmp_path / "e", "--num", "1000000000"),
                   "--num 1000000000", "MiB free")
    assert list(tmp_path.iterdir()) == []  # neither --out nor a temporary folder


# --- a pipeline is checked whole before its first stage trains ---------------------------------------------------

def _pipeline(tmp_path: Path, second: str) -> Path:
    p = tmp_path / "pipe.yaml"
    p.write_text(f"out: {tmp_path / 'out'}\nstages:\n  - {{name: teacher, config: {MICRO}}}\n  - {second}\n")
    return p


@pytest.mark.parametrize("second,fragments", [
    (f"{{name: ccd, config: {MICRO}, init: teacher, set: [train.schedule=cosin]}}",
     ("stages[1] (ccd)", "train.schedule: expected one of")),
    ("{name: ccd, config: experiments/micro/nope.yaml, init: teacher}", ("stages[1] (ccd)", "config file not found")),
    (f"{{name: teacher, config: {MICRO}}}", ("stages[1].name: 'teacher' is also the name of stages[0]",)),
    (f"{{name: eval, config: {MICRO}}}", ("stages[1].name: 'eval'",)),
    (f"{{name: ccd, config: {MICRO}, set: [train.method=ccdd]}}", ("stages[1] (ccd)", "unknown method 'ccdd'")),
])
def test_pipeline_refuses_a_bad_later_stage_before_training(second, fragments, tmp_path, capsys):
    one_line_error(*cli(capsys, "pipeline", _pipeline(tmp_path, second)), *fragments)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe.yaml"]  # no stage trained, no folder made


# --- weights that hold no usable numbers -----------------------------------------------------------------------

@pytest.mark.parametrize("kind,fragment", [("nan", "holds NaN or inf values"), ("int32", "is stored as int32")])
def test_weights_holding_nan_or_integers_are_refused(kind, fragment, run, tmp_path, capsys):  # noqa: F811
    import shutil
    model = tmp_path / "model"
    shutil.copytree(run.parent / "model", model)
    w = load_file(model / "model.safetensors")
    name = sorted(w)[0]
    w[name] = w[name] * float("nan") if kind == "nan" else w[name].to(torch.int32)
    save_file(w, model / "model.safetensors")
    before = snapshot(tmp_path)
    for argv in (["sample", model, "--num", "1", "--steps", "1", "--out", tmp_path / "s"],
                 ["train", MICRO, "--set", f"model.weights={model / 'model.safetensors'}", "--out", tmp_path / "r"]):
        one_line_error(*cli(capsys, *argv), str(model / "model.safetensors"), fragment, repr(name))
    assert snapshot(tmp_path) == before


def test_a_state_json_that_is_not_json_is_named(run, tmp_path, capsys):  # noqa: F811
    import shutil
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    state = cut / "checkpoints" / "step-000008" / "state.json"
    state.write_text("{ torn")
    for argv in (["sample", cut, "--num", "1", "--steps", "1", "--out", tmp_path / "s"],
                 ["export", cut, "--out", tmp_path / "m"]):
        one_line_error(*cli(capsys, *argv), str(state), "not a checkpoint's state.json")


def test_a_broken_link_to_weights_is_named(run, tmp_path, capsys):  # noqa: F811
    os.symlink(tmp_path / "gone.safetensors", tmp_path / "w.safetensors")
    one_line_error(*cli(capsys, "train", MICRO, "--set", f"model.weights={tmp_path / 'w.safetensors'}",
                        "--out", tmp_path / "r"), "is a broken link", "gone.safetensors")


def test_export_diffusers_prints_only_its_own_lines(tmp_path):
    """transformers' "CLIPImageProcessor requires torchvision" warning does not precede the command's line."""
    code = subprocess.run([sys.executable, "-m", "workbench", "export", "experiments/toy/teacher", "--diffusers",
                           str(tmp_path / "d")], capture_output=True, text=True, timeout=300)
    assert code.returncode == 2 and code.stderr.count("\n") == 1 and code.stderr.startswith("error: "), code.stderr

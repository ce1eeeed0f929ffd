"""experiments/wan: the paper's Wan2.1-Fun-1.3B-InP pipeline loads and checks without weights or data on this
machine (`pipeline --check` names each input a researcher supplies), and passes once they are there."""
import shutil
from pathlib import Path

from workbench.__main__ import main
from workbench.methods import load_config

ROOT = Path(__file__).resolve().parents[1]
SUPPLIED = ["models/Wan2.1-Fun-1.3B-InP/transformer", "models/Wan2.1-Fun-1.3B-InP/vae",
            "models/Wan2.1-Fun-1.3B-InP/text_encoder", "models/Wan2.1-Fun-1.3B-InP/image_encoder",
            "models/dinov2-base", "data/openvid/videos"]
FILES = ["models/Wan2.1-Fun-1.3B-InP/transformer/diffusion_pytorch_model.safetensors", "data/openvid/openvid.csv"]


def test_the_paper_settings_are_what_the_stage_configs_say():
    ccd, da, ta = (load_config(ROOT / f"experiments/wan/{n}.yaml") for n in ("ccd", "da", "dpo"))
    assert (ccd.data.videos.height, ccd.data.videos.width, ccd.data.videos.frames) == (480, 832, 61)
    assert ccd.train.lr == da.train.lr == ta.train.lr == 1e-6 and ccd.train.batch_size == 1
    assert ccd.train.steps + da.train.steps == 3000 and ccd.distill.tangent_warmup == 1000   # N_warmup = 1000
    assert da.adversarial.lambda_adv == 0.01 and ccd.train.ema_decay == da.train.ema_decay == 0.95
    assert (ta.dpo.beta, ta.dpo.lambda_rf, ta.model.lora.rank > 0) == (2500.0, 2.0, True)
    for cfg in (ccd, da, ta):   # the memory plan of experiments/wan/MEMORY.md
        assert cfg.train.fsdp and cfg.train.activation_checkpointing and cfg.train.mixed_precision == "bf16"


def test_check_names_every_missing_input_and_passes_when_they_are_there(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "experiments/wan", tmp_path / "experiments/wan")
    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "experiments/wan/swiftvideo.yaml", "--check"]) == 2
    err = capsys.readouterr().err
    assert all(f"missing: {p} (" in err for p in SUPPLIED + FILES), err
    assert "ccd_da: adversarial.feature_net" in err and "ccd: model.weights" not in err   # init gives CCD+DA its weights
    for p in SUPPLIED:
        (tmp_path / p).mkdir(parents=True)
    for f in FILES:
        (tmp_path / f).touch()
    assert main(["pipeline", "experiments/wan/swiftvideo.yaml", "--check"]) == 0
    assert "4 stages, every config checked; every input present" in capsys.readouterr().out

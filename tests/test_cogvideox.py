"""The CogVideoX backbone at tiny size with the real classes (CogVideoXTransformer3DModel, AutoencoderKLCogVideoX, T5,
CogVideoX-5B's scheduler config): its conditioning is the stock pipeline's, CCD and DA train a step on it, and its
export to a stock `CogVideoXImageToVideoPipeline` folder samples what the workbench samples.

Folders are written by `workbench/models/tiny_cogvideox.py` with `save_pretrained`; nothing is downloaded.
"""
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

from workbench.__main__ import main
from workbench.config import ModelConfig
from workbench.methods import load_config
from workbench.models import build_backbone
from workbench.models.cogvideox import PRESETS, CogVideoXFlowNet
from workbench.models.jvp import velocity_and_tangent
from workbench.models.tiny_cogvideox import CLIP_FRAMES, CLIP_SIZE, SCHEDULER_5B, save_tiny_cogvideox
from workbench.runs import load_model
from workbench.sampling import euler, get_sampler, schedule
from workbench.train.loop import train
from workbench.vp import log_snr_of_flow_time
from tests.run_on_disk import write_run

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a red ball moving left"
ATOL = 1e-4    # float32 latents of mean |x| ~0.5-1 (measured max |diff| ~1e-6; the VAE posterior's std is 3e-7)
LATENT_BTCHW = (1, 3, 4, 4, 4)   # 9 frames of 32 x 32 px: 3 latent frames, 4 channels, 4 x 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(ModelConfig kwargs of the v-prediction teacher, its CogVideoXFlowNet in eval mode, Encoders)."""
    paths = save_tiny_cogvideox(tmp_path_factory.mktemp("tiny-cogvideox"))
    net, encoders = build_backbone(ModelConfig(**paths))
    return paths, net.eval(), encoders


def first_frame():
    """A random RGB image of the clips' size and it as [-1, 1] pixels (1, 3, H, W)."""
    pixels = np.random.default_rng(0).integers(0, 256, (CLIP_SIZE, CLIP_SIZE, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1


def stock_pipeline(paths, net, encoders):
    return CogVideoXImageToVideoPipeline(tokenizer=encoders.text_encoder.tokenizer, vae=encoders.codec.vae,
                                         text_encoder=encoders.text_encoder.model, transformer=net.transformer,
                                         scheduler=CogVideoXDDIMScheduler.from_pretrained(paths["vp_schedule"]))


def test_conditioning_is_what_the_stock_pipeline_builds(tiny):
    paths, net, encoders = tiny
    image, first = first_frame()
    cond = encoders.condition(first, [CAPTION], frames=CLIP_FRAMES)
    pipe = stock_pipeline(paths, net, encoders)
    noise_BTCHW = torch.randn(LATENT_BTCHW, generator=torch.Generator().manual_seed(1))
    pixels = pipe.video_processor.preprocess(image, height=CLIP_SIZE, width=CLIP_SIZE)
    latents, image_latents = pipe.prepare_latents(pixels, 1, 4, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, torch.float32,
                                                  torch.device("cpu"), torch.Generator().manual_seed(0), noise_BTCHW)
    # first frame: VAE latent x 0.7 on latent frame 0, zeros after; no mask channels
    torch.testing.assert_close(cond.first_BCTHW, image_latents.transpose(1, 2), atol=1e-5, rtol=0)
    assert cond.first_BCTHW[:, :, 1:].eq(0).all() and cond.mask_BMTHW.shape == (1, 0, 3, 4, 4)
    # T5 tokens: the transformer's 16, padding's states kept (no attention mask)
    text, _ = pipe.encode_prompt(CAPTION, do_classifier_free_guidance=False, max_sequence_length=16)
    torch.testing.assert_close(cond.text_BLD, text)
    # the transformer's inputs: cat on channels in (B, T, C, H, W), the pipeline's RoPE tables, no ofs (5B-I2V)
    inputs = net.cogvideox_inputs(noise_BTCHW.transpose(1, 2), cond)
    torch.testing.assert_close(inputs["hidden_states"], torch.cat([latents, image_latents], dim=2))
    for ours, theirs in zip(inputs["image_rotary_emb"], pipe._prepare_rotary_positional_embeddings(
            CLIP_SIZE, CLIP_SIZE, LATENT_BTCHW[1], torch.device("cpu"))):
        torch.testing.assert_close(ours, theirs)
    assert inputs["ofs"] is None and net.transformer.config.ofs_embed_dim is None


def test_the_5b_schedule_is_bridged_to_nearly_pure_noise(tiny):
    """CogVideoX-5B's schedule has zero terminal SNR (rescale_betas_zero_snr): kept at 2^-24, as diffusers' Euler
    scheduler keeps it, the bridge reaches t = 0.99976 and the VP timesteps are CogVideoXDDIMScheduler's."""
    _, net, _ = tiny
    theirs = CogVideoXDDIMScheduler(**SCHEDULER_5B).alphas_cumprod
    assert theirs[-1] == 0
    torch.testing.assert_close(net.vp.alphas_cumprod[:-1], theirs[:-1], rtol=0, atol=0)
    lo, hi = net.vp.t_range
    assert 0.028 < lo < 0.029 and 0.9997 < hi < 0.9998
    s = net.net_timestep(torch.tensor([1.0, hi, 0.5]))
    assert s[0] == s[1] == 999
    lam = float(net.vp.log_snr[int(s[2])])   # the VP timestep of t = 0.5 has log-SNR 0
    assert abs(lam - float(log_snr_of_flow_time(torch.tensor(0.5)))) < 0.05


def test_whole_jvp_with_chunked_attention_goes_through_cogvideox_attention(tiny, monkeypatch):
    """`distill.jvp: whole` + `jvp_attention: chunked`: the TorchFunctionMode catches CogVideoX's SDPA calls, and the
    tangent equals the one with math attention."""
    from workbench.models import jvp
    _, net, encoders = tiny
    _, first = first_frame()
    cond = encoders.condition(first.expand(2, -1, -1, -1), [CAPTION, "a blue cat"], frames=CLIP_FRAMES)
    g = torch.Generator().manual_seed(3)
    x, dxdt = torch.randn((2, 4, 3, 4, 4), generator=g), torch.randn((2, 4, 3, 4, 4), generator=g)
    t = torch.tensor([0.3, 0.8])
    calls = []
    chunked = jvp.chunked_attention
    monkeypatch.setattr(jvp, "chunked_attention", lambda *a, **k: calls.append(1) or chunked(*a, **k))
    f, dfdt = velocity_and_tangent(net, x, t, cond, dxdt, mode="whole", attention="chunked", chunk=4)
    assert len(calls) == net.transformer.config.num_layers
    f_math, dfdt_math = velocity_and_tangent(net, x, t, cond, dxdt, mode="whole", attention="math")
    torch.testing.assert_close(f, f_math, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dfdt, dfdt_math, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A working folder with `python -m workbench tiny-cogvideox`'s output at models/tiny-cogvideox (8 clips)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        assert main(["tiny-cogvideox", "--out", "models/tiny-cogvideox", "--clips", "8"]) == 0
    return home


@pytest.mark.parametrize("stage", ["ccd", "da"])
def test_one_training_step_of_the_tiny_config(home, stage, monkeypatch):
    monkeypatch.chdir(home)
    config = ROOT / "experiments/tiny-cogvideox" / f"{stage}.yaml"
    cfg = load_config(config, ["train.steps=1", "data.train_size=4", "data.test_size=2"])
    run = train(cfg, home / "runs" / stage, progress=False)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["step"] == 1 and np.isfinite(logged[0]["loss"])
    assert stage == "ccd" or {"loss_adv_g", "loss_d"} <= set(logged[0])   # DA's GAN ran


def test_sampling_decodes_clips_of_the_config_size(tiny):
    _, net, encoders = tiny
    _, first = first_frame()
    cond = encoders.condition(first, [CAPTION], frames=CLIP_FRAMES)
    noise = torch.randn(LATENT_BTCHW, generator=torch.Generator().manual_seed(1)).transpose(1, 2)
    with torch.no_grad():
        x0 = euler(net, noise, cond, schedule(2), guidance=2.0, null_text=encoders.null_text(1))
        pixels = encoders.decode(x0)
    assert torch.isfinite(x0).all() and (x0 - noise).abs().mean() > 0.1
    assert pixels.shape == (1, 3, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE) and pixels.abs().max() <= 1


@pytest.mark.parametrize("path, sets, output_type", [
    ("vp", ["sample.sampler=euler", "sample.shift=3.0", "sample.guidance=2.0"], "latent"),  # v-prediction student
    ("vp", ["sample.sampler=consistency", "sample.shift=1.0"], "pt"),
    ("flow", ["sample.sampler=euler", "sample.shift=3.0"], "latent"),                      # a flow student
])
def test_stock_pipeline_samples_what_the_workbench_samples(tiny, tmp_path, path, sets, output_type):
    paths = dict(tiny[0])
    if path == "flow":
        paths.pop("vp_schedule")
        paths["prediction"] = "velocity"
    run = write_run(tmp_path / "run", sets, paths)
    out = tmp_path / "pipe"
    assert main(["export", str(run), "--diffusers", str(out), "--steps", "3", "--dtype", "float32"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["load"] == {"trust_remote_code": True}
    assert (out / "scheduler" / "scheduling_workbench_cogvideox.py").is_file()

    image, first = first_frame()
    model = load_model(run)
    sc = model.config.sample
    assert isinstance(model.net, CogVideoXFlowNet) and (model.net.vp is not None) == (path == "vp")
    cond = model.encoders.condition(first, [CAPTION], frames=CLIP_FRAMES)
    noise_BTCHW = torch.randn(LATENT_BTCHW, generator=torch.Generator().manual_seed(1))
    # the pipeline's generator draws the VAE posterior's sample of the first frame, then the re-noising
    fresh = torch.Generator().manual_seed(2)
    torch.randn((1, 4, 1, 4, 4), generator=fresh)
    null = model.encoders.null_text(1) if sc.guidance != 1 else None
    with torch.no_grad():
        ours = get_sampler(sc.sampler)(
            model.net, noise_BTCHW.transpose(1, 2), cond, schedule(3, sc.shift), guidance=sc.guidance, null_text=null,
            noise_sampler=lambda i: torch.randn(LATENT_BTCHW, generator=fresh).transpose(1, 2))
        assert (ours - noise_BTCHW.transpose(1, 2)).abs().mean() > 0.1           # it sampled something
        if output_type == "pt":                                                   # frames in [0, 1]
            ours = (model.encoders.decode(ours) + 1) / 2
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(out, trust_remote_code=True)
    theirs = pipe(image=image, prompt=CAPTION, height=CLIP_SIZE, width=CLIP_SIZE, num_frames=CLIP_FRAMES,
                  latents=noise_BTCHW.clone(), generator=torch.Generator().manual_seed(2), output_type=output_type,
                  **meta["call"]).frames.transpose(1, 2)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


@pytest.mark.parametrize("key", ["transformer_path", "vae_path", "text_encoder_path", "vp_schedule"])
def test_missing_folder_names_key_and_path(tiny, tmp_path, key):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match=f"model.{key}: {missing}"):
        build_backbone(ModelConfig(**{**tiny[0], key: str(missing)}))


def test_parts_that_do_not_fit_fail_at_build(tiny, tmp_path):
    from workbench.models.tiny_wan import save_image_encoder, save_transformer
    paths = tiny[0]
    with pytest.raises(ValueError, match="model.image_encoder_path: .*takes no image tokens"):
        build_backbone(ModelConfig(**paths, image_encoder_path=str(save_image_encoder(tmp_path / "clip"))))
    with pytest.raises(ValueError, match="model.transformer_path: .* holds a WanTransformer3DModel"):
        build_backbone(ModelConfig(**{**paths, "transformer_path": str(save_transformer(tmp_path / "wan"))}))
    with pytest.raises(ValueError, match="model.prediction: v is a VP prediction"):
        build_backbone(ModelConfig(**{**paths, "vp_schedule": ""}))


def test_real_preset_is_the_5b_i2v_architecture():
    from diffusers import CogVideoXTransformer3DModel
    with torch.device("meta"):              # shapes only: nothing is allocated
        m = CogVideoXTransformer3DModel(**PRESETS["cogvideox-5b-i2v"])
    cfg = m.config
    assert (cfg.in_channels, cfg.out_channels, cfg.num_layers) == (32, 16, 42)   # 16 noise + 16 first-frame latents
    assert (cfg.num_attention_heads, cfg.attention_head_dim, cfg.text_embed_dim) == (48, 64, 4096)
    assert cfg.use_rotary_positional_embeddings and cfg.use_learned_positional_embeddings
    n = sum(p.numel() for p in m.parameters())
    assert 5.5e9 < n < 5.6e9, n             # 5.57 B


@pytest.mark.parametrize("config", ["experiments/tiny-cogvideox/ccd.yaml", "experiments/tiny-cogvideox/da.yaml"])
def test_the_blockwise_jvp_is_refused_for_cogvideox_at_load(config):
    from workbench.config import ConfigError
    from workbench.methods import load_config
    for mode in ("blockwise", "reverse_blockwise"):
        with pytest.raises(ConfigError, match=f"distill.jvp: {mode}: the block-wise JVP .* model.preset=tiny-cogvideox "
                                              f"is not Wan; use distill.jvp=whole"):
            load_config(config, [f"distill.jvp={mode}", "distill.jvp_attention=math"])
    load_config(config, ["train.method=dpo"])           # no tangent: distill.jvp's default stands

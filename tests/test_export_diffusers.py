"""`export RUN --diffusers DIR` round trip: the stock WanImageToVideoPipeline, given the same noise, samples what the
workbench's sampler samples (tiny Wan, float32, within ATOL); its schedulers walk `sampling.schedule` exactly.

Runs are written as the trainer writes them (config.yaml + checkpoints/step-N/{state.json, model.safetensors}),
with the tiny transformer's weights perturbed so that an export of the base folder instead of the run would show.
"""
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import WanImageToVideoPipeline

from workbench.models.tiny_wan import save_tiny_wan
from workbench.__main__ import main
from workbench.export_diffusers import diffusers_scheduler
from workbench.runs import load_model
from workbench.sampling import get_sampler, schedule
from tests.run_on_disk import write_run

ATOL = 1e-4      # float32 latents of mean |x| ~0.6-1; measured max |diff| <= 1e-6 (a wrong grid: >= 0.2)
CAPTION = "a red ball moving left"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("tiny-wan"))


def first_frame(height=32, width=32):
    """A random RGB image (at 32x32, the tiny CLIP's size, its processor's resize and crop are the identity) and it
    as [-1, 1] pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1


def round_trip(run, out, steps, trust_remote_code, size=(32, 32), output_type="latent"):
    """(the workbench sampler's latents, the stock pipeline's output, the pipeline) on the same first frame of
    `size` (H, W), caption and noise."""
    image, first = first_frame(*size)
    model = load_model(run)
    sc = model.config.sample
    cond = model.encoders.condition(first, [CAPTION], frames=5)
    noise = torch.randn(1, 4, 2, size[0] // 8, size[1] // 8, generator=torch.Generator().manual_seed(1))
    fresh = torch.Generator().manual_seed(2)   # the consistency sampler's re-noising draws ...
    null = model.encoders.null_text(1) if sc.guidance != 1 else None
    with torch.no_grad():
        ours = get_sampler(sc.sampler)(model.net, noise, cond, schedule(steps, sc.shift), guidance=sc.guidance,
                                       null_text=null, noise_sampler=lambda i: torch.randn(noise.shape, generator=fresh))
    call = json.loads((out / "export.json").read_text())["call"]
    assert call == {"num_inference_steps": steps, "guidance_scale": sc.guidance}
    pipe = WanImageToVideoPipeline.from_pretrained(out, trust_remote_code=trust_remote_code)
    torch.manual_seed(2)                       # ... and the pipeline's (it does not pass a generator to step)
    theirs = pipe(image=image, prompt=CAPTION, height=size[0], width=size[1], num_frames=5, latents=noise.clone(),
                  output_type=output_type, **call).frames
    return ours, theirs, pipe


@pytest.mark.parametrize("sets, stock", [
    (["sample.sampler=euler", "sample.shift=3.0", "sample.guidance=2.0"], "FlowMapEulerDiscreteScheduler"),
    (["sample.sampler=consistency", "sample.shift=1.0"], "FlowMatchLCMScheduler"),
    (["sample.sampler=consistency", "sample.shift=3.0"], None),            # no stock scheduler: the adapter
    (["sample.sampler=euler", "model.prediction=x0"], None),               # x0 output: the adapter
])
def test_stock_pipeline_samples_what_the_workbench_samples(tiny, tmp_path, sets, stock):
    run = write_run(tmp_path / "run", sets, tiny)
    out = tmp_path / "pipe"
    assert main(["export", str(run), "--diffusers", str(out), "--steps", "4", "--dtype", "float32"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["stock_scheduler"] == (stock is not None) and meta["load"]["trust_remote_code"] == (stock is None)
    if stock is None:   # refused without trust_remote_code: the adapter is code that ships in the folder
        assert (out / "scheduler" / "scheduling_workbench_flow.py").is_file()
        with pytest.raises(ValueError):
            WanImageToVideoPipeline.from_pretrained(out)
    ours, theirs, pipe = round_trip(run, out, 4, trust_remote_code=stock is None)
    assert stock is None or type(pipe.scheduler).__name__ == stock
    assert ours.abs().mean() > 0.1 and (ours - noise_of(ours)).abs().mean() > 0.1   # it sampled something
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def noise_of(like):
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(1))


def test_stock_pipeline_reproduces_the_workbench_where_clip_resizes_the_first_frame(tiny, tmp_path):
    """A CCD-style student (velocity, euler) at 48x64: the tiny CLIP processor (Wan's: shortest edge to 32, centre
    crop 32x32, PIL bicubic) resizes and crops the first frame; the workbench runs the very processor it ships, so
    image tokens and decoded frames agree (torch's resize instead: tokens off by ~2 on these random pixels)."""
    run = write_run(tmp_path / "run", ["train.method=ccd", "sample.sampler=euler", "sample.shift=1.0"], tiny)
    out = tmp_path / "pipe"
    assert main(["export", str(run), "--diffusers", str(out), "--steps", "4", "--dtype", "float32"]) == 0
    assert not json.loads((out / "export.json").read_text())["load"]["trust_remote_code"]
    size = (48, 64)
    ours, theirs, pipe = round_trip(run, out, 4, trust_remote_code=False, size=size, output_type="pt")
    model = load_model(run)
    shipped = json.loads((out / "image_processor" / "preprocessor_config.json").read_text())
    assert shipped["crop_size"] == {"height": 32, "width": 32} and shipped["do_center_crop"]   # 48x64 is cropped
    assert type(pipe.image_processor).from_pretrained(out / "image_processor").to_dict() == \
        model.encoders.image_encoder.processor.to_dict()
    image, first = first_frame(*size)
    with torch.no_grad():
        tokens = model.encoders.image_encoder(first)
        torch.testing.assert_close(pipe.encode_image(image, torch.device("cpu")), tokens, atol=1e-5, rtol=0)
        frames = (model.encoders.decode(ours) + 1) / 2                     # B, C, T, H, W in [0, 1], as the pipeline
    assert theirs.shape == (1, 5, 3, *size)                                # B, T, C, H, W
    assert (ours - noise_of(ours)).abs().mean() > 0.1 and frames.std() > 0.01   # it sampled something
    torch.testing.assert_close(theirs.permute(0, 2, 1, 3, 4), frames, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["own", "pipeline", "none"])
def test_clip_processor_comes_from_the_clip_folder(tmp_path, layout):
    """The CLIP folder's preprocessor_config.json, a diffusers pipeline's image_processor/ beside its image_encoder/,
    else Wan's stretch to the CLIP square; the encoder's tokens are its CLIP on that processor's pixels."""
    from transformers import CLIPImageProcessorPil

    from workbench.models.tiny_wan import save_image_encoder
    from workbench.models.text import CLIPImageEncoder
    folder = save_image_encoder(tmp_path / "image_encoder", processor=layout == "own")
    if layout == "pipeline":
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) \
            .save_pretrained(tmp_path / "image_processor")
    clip = CLIPImageEncoder(str(folder))
    settings = clip.processor.to_dict()
    if layout == "none":
        assert settings["size"] == {"height": 32, "width": 32} and not settings["do_center_crop"]
    else:
        assert settings["size"] == {"shortest_edge": 32} and settings["do_center_crop"]
    image, first = first_frame(48, 64)
    pixels = clip.processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        want = clip.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(clip(first), want, atol=0, rtol=0)


def test_clip_processor_must_make_the_clip_size(tmp_path):
    from transformers import CLIPImageProcessorPil

    from workbench.models.tiny_wan import save_image_encoder
    from workbench.models.text import CLIPImageEncoder
    folder = save_image_encoder(tmp_path / "clip", processor=False)
    CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40}).save_pretrained(folder)
    with pytest.raises(ValueError, match="model.image_encoder_path.*40x40.*32x32"):
        CLIPImageEncoder(str(folder))


def test_lora_run_exports_merged_and_as_a_load_lora_weights_file(tiny, tmp_path):
    run = write_run(tmp_path / "run", ["sample.sampler=euler", "sample.shift=2.0"], tiny, lora_rank=2)
    out = tmp_path / "pipe"
    assert main(["export", str(run), "--diffusers", str(out), "--steps", "2", "--dtype", "float32"]) == 0
    ours, theirs, pipe = round_trip(run, out, 2, trust_remote_code=False)
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    # the adapter file on its base: the run's base weights + load_lora_weights sample the merged transformer's output
    base = {k.replace(".base_layer", ""): v for k, v in load_model(run, merge_lora_weights=False)
            .net.transformer.state_dict().items() if "lora_" not in k}
    pipe.transformer.load_state_dict(base)
    image, _ = first_frame()
    kwargs = dict(image=image, prompt=CAPTION, height=32, width=32, num_frames=5, num_inference_steps=2,
                  guidance_scale=1.0, output_type="latent")
    without = pipe(latents=noise_of(ours), **kwargs).frames
    pipe.load_lora_weights(out / "lora")
    assert not torch.allclose(without, theirs, atol=1e-3)                          # the adapter matters ...
    torch.testing.assert_close(pipe(latents=noise_of(ours), **kwargs).frames, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sampler, shift, steps", [("euler", 5.0, 1), ("euler", 3.0, 25), ("consistency", 1.0, 1),
                                                   ("consistency", 1.0, 4), ("consistency", 5.0, 2),
                                                   ("consistency", 5.0, 4)])
def test_every_scheduler_walks_the_workbench_grid(sampler, shift, steps):
    scheduler, _ = diffusers_scheduler(sampler, shift, steps)
    scheduler.set_timesteps(steps)
    want = schedule(steps, shift).double()
    torch.testing.assert_close(scheduler.sigmas.double(), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(scheduler.timesteps.double(), 1000 * want[:-1], atol=1e-3, rtol=0)


def test_toy_model_is_refused_with_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", ["model.preset=toy"])
    assert main(["export", str(run), "--diffusers", str(tmp_path / "pipe")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "toy model" in err and str(run) in err
    assert not (tmp_path / "pipe").exists()

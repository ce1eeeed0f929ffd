"""Export a Wan- or CogVideoX-scale model as a stock diffusers pipeline folder
(`python -m workbench export RUN --diffusers DIR`).

    DIR/  model_index.json  transformer/  vae/  text_encoder/  tokenizer/  image_encoder/  image_processor/
          scheduler/  export.json  (lora/pytorch_lora_weights.safetensors for a LoRA run such as TA)

`diffusers.WanImageToVideoPipeline.from_pretrained(DIR)` loads it without the workbench; call it with export.json's
`call` (num_inference_steps, guidance_scale) and the first frame as an RGB image of the clip's height x width (the
pipeline gives CLIP the image as passed). image_processor/ is the CLIP processor the workbench itself runs
(`models.text.clip_processor`: the CLIP folder's own, else Wan's stretch to the CLIP square), so the image tokens, and
with them the samples, agree at every frame size. The pipeline builds the same Fun-InP input as `FlowNet.wan_inputs`
(cat[x_t, 4 mask channels with frame 0 = 1, first-frame latents]), feeds timestep = 1000 t and steps with the
scheduler, which must walk the workbench's grid `sampling.schedule(N, shift)` = shift(linspace(1, 0, N + 1)):
  euler                                  FlowMapEulerDiscreteScheduler(shift): that grid at any N, x + (t' - t) F.
  consistency, shift 1 or N <= 2         FlowMatchLCMScheduler (x0 = x - t F, re-noised): its grid is
                                         shift(linspace(1, ~0, N)); shift 1 + shift_terminal = t_{N-1} makes it ours.
  consistency with shift != 1 and N > 2, or any model.prediction=x0 (the pipeline reads the output as a velocity):
                                         no stock scheduler; the adapter `scheduling_workbench_flow.py` is shipped in
                                         scheduler/ (from_pretrained(DIR, trust_remote_code=True)).
The pipeline does not pass its generator to the scheduler: re-noising draws from torch's global RNG.

A CogVideoX model (models/cogvideox.py) exports as a `CogVideoXImageToVideoPipeline` folder (transformer/ vae/
text_encoder/ tokenizer/ scheduler/), always with the adapter `scheduling_workbench_cogvideox.py` (no stock scheduler
fits that pipeline's loop; see that file): the workbench's sampler on its grid, for a flow network or a diffusion one
(model.vp_schedule: the VP timestep and x_vp fed to the transformer, its prediction bridged as workbench/vp.py does).
The pipeline builds the same input as `CogVideoXFlowNet.cogvideox_inputs`; export.json's `call` adds the T5 length
(max_sequence_length). It samples the first frame's VAE latent (`retrieve_latents`) where the workbench takes the mode:
the two agree to within the VAE posterior's spread.
"""
from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch

from workbench.export import DTYPES, check_export_target, staged
from workbench.flow import velocity_from_x0
from workbench.folders import MARKER
from workbench.models.cogvideox import CogVideoXFlowNet
from workbench.models.lora import merge_lora, save_lora
from workbench.models.wan import vp_schedule_file
from workbench.vp import ZERO_SNR_FLOOR
from workbench.runs import load_model, resolve_weights
from workbench.sampling import schedule

ADAPTER = Path(__file__).with_name("scheduling_workbench_flow.py")
COGVIDEOX_ADAPTER = Path(__file__).with_name("scheduling_workbench_cogvideox.py")


def diffusers_scheduler(sampler: str, shift: float, steps: int, prediction: str = "velocity"):
    """The scheduler that steps as `sampling.SAMPLERS[sampler]` on `schedule(steps, shift)`: a stock one where
    diffusers has it (see the module docstring), else the adapter; returns (scheduler, is_stock)."""
    from diffusers import FlowMapEulerDiscreteScheduler, FlowMatchLCMScheduler
    if prediction == "velocity" and sampler == "euler":
        return FlowMapEulerDiscreteScheduler(shift=shift), True
    if prediction == "velocity" and sampler == "consistency" and (shift == 1.0 or steps <= 2):
        terminal = float(schedule(steps, shift)[-2]) if steps >= 2 else None   # N = 1: the grid is [1] already
        return FlowMatchLCMScheduler(shift=1.0, shift_terminal=terminal), True
    adapter = _adapter_class(ADAPTER, "WorkbenchFlowScheduler")
    return adapter(shift=shift, sampler=sampler, prediction=prediction, t_min=T_MIN), False


T_MIN = inspect.signature(velocity_from_x0).parameters["t_min"].default


def cogvideox_scheduler(net, sampler: str, shift: float, vp_schedule: str = ""):
    """The adapter WorkbenchCogVideoXScheduler stepping `sampler` on `schedule(N, shift)` for a CogVideoXFlowNet: on
    its VP path the betas of its model.vp_schedule (a CogVideoX scheduler config) and the workbench's terminal floor."""
    adapter = _adapter_class(COGVIDEOX_ADAPTER, "WorkbenchCogVideoXScheduler")
    if net.vp is None:
        return adapter(path="flow", prediction=net.prediction, sampler=sampler, shift=shift, t_min=T_MIN)
    betas = {k: v for k, v in json.loads(vp_schedule_file(vp_schedule).read_text()).items()
             if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr",
                      "snr_shift_scale")}
    return adapter(**betas, alphas_cumprod_floor=ZERO_SNR_FLOOR, path="vp", prediction=net.prediction,
                   sampler=sampler, shift=shift, t_min=T_MIN)


def _adapter_class(file: Path, name: str):
    """The adapter class from the very file that is shipped (so the test runs what diffusers will load)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def _cast(transformer, dtype: torch.dtype):
    """`dtype` for every parameter but those of the modules diffusers keeps in float32 (`_keep_in_fp32_modules`:
    time embedding, norms, modulation tables), which `from_pretrained(torch_dtype=...)` then loads unrounded."""
    keep = set(transformer._keep_in_fp32_modules or ())
    for name, p in transformer.named_parameters():
        if not keep & set(name.split(".")):
            p.data = p.data.to(dtype)
    return transformer


def _wan_pipeline_class():
    """diffusers' WanImageToVideoPipeline, imported without transformers' warning that CLIPImageProcessor (which the
    pipeline module names) falls back to its PIL version without torchvision (the PIL one is what this project uses)."""
    import logging
    quiet = logging.getLogger("transformers.utils.import_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from diffusers import WanImageToVideoPipeline
    finally:
        quiet.setLevel(level)
    return WanImageToVideoPipeline


def export_diffusers(path: str | Path, out: str | Path, dtype: str = "float16", steps: int = 4,
                     force: bool = False) -> Path:
    """Write `out` as a WanImageToVideoPipeline (or CogVideoXImageToVideoPipeline) folder for the model of a run,
    checkpoint or model folder `path`, with its scheduler set for the config's sampler and shift at `steps` steps; the
    transformer cast to `dtype`."""
    out = Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if steps < 1:
        raise ValueError(f"--steps: expected a whole number >= 1, got {steps}")
    weights, _ = resolve_weights(path)
    check_export_target(out, force, "--diffusers")
    model = load_model(path, merge_lora_weights=False)
    mc, sc, enc, net = model.config.model, model.config.sample, model.encoders, model.net
    if not (mc.vae_path and mc.text_encoder_path) or net.positions:
        raise ValueError(f"--diffusers: {path} is a toy model (model.preset={mc.preset}, no model.vae_path or "
                         f"model.text_encoder_path); only Wan- or CogVideoX-scale models export to a diffusers "
                         f"pipeline")
    cogvideox = isinstance(net, CogVideoXFlowNet)
    if mc.vp_schedule and not cogvideox:  # the stock pipeline's schedulers step other coordinates than the flow's
        raise ValueError(f"--diffusers: {path} is a diffusion (VP) Wan network (model.vp_schedule); only flow "
                         f"networks and CogVideoX export to a diffusers pipeline so far: distil it into a flow student")
    if cogvideox:
        scheduler, adapter = cogvideox_scheduler(net, sc.sampler, sc.shift, mc.vp_schedule), COGVIDEOX_ADAPTER
        call = {"max_sequence_length": net.transformer.config.max_text_seq_length}
    else:
        scheduler, stock = diffusers_scheduler(sc.sampler, sc.shift, steps, mc.prediction)
        adapter, call = None if stock else ADAPTER, {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(out) as tmp:
        if mc.lora.rank:  # TA: the adapter alone for load_lora_weights on its base, and merged into transformer/
            save_lora(net.transformer, tmp / "lora")
            merge_lora(net.transformer)
        transformer = _cast(net.transformer, DTYPES[dtype])
        if cogvideox:
            from diffusers import CogVideoXImageToVideoPipeline
            pipe = CogVideoXImageToVideoPipeline(tokenizer=enc.text_encoder.tokenizer, vae=enc.codec.vae,
                                                 text_encoder=enc.text_encoder.model, transformer=transformer,
                                                 scheduler=scheduler)
        else:
            clip = enc.image_encoder
            # the very processor the workbench's CLIPImageEncoder runs (models.text.clip_processor): same tokens at
            # any size
            pipe = _wan_pipeline_class()(
                tokenizer=enc.text_encoder.tokenizer, text_encoder=enc.text_encoder.model, vae=enc.codec.vae,
                scheduler=scheduler, image_processor=None if clip is None else clip.processor,
                image_encoder=None if clip is None else clip.model, transformer=transformer)
        pipe.save_pretrained(tmp)
        if adapter:  # model_index.json names the shipped file; diffusers loads it with trust_remote_code=True
            shutil.copy(adapter, tmp / "scheduler" / adapter.name)
            index = json.loads((tmp / "model_index.json").read_text())
            index["scheduler"] = [adapter.stem, type(scheduler).__name__]
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (tmp / MARKER).write_text(json.dumps({
            "source": str(Path(weights).resolve()), "dtype": dtype, "sampler": sc.sampler, "shift": sc.shift,
            "prediction": mc.prediction, "scheduler": type(scheduler).__name__, "stock_scheduler": not adapter,
            "load": {"trust_remote_code": bool(adapter)},
            "call": {"num_inference_steps": steps, "guidance_scale": sc.guidance, **call}}, indent=1))
    return out

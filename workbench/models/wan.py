"""The backbone: diffusers `WanTransformer3DModel` at every scale, and Fun-InP image-to-video inputs.

Presets give the transformer's architecture; `in_channels` = latent + mask + first-frame channels
(+ 3 absolute-position channels for the toy, see POSITION_PRESETS).
The I2V input is assembled in one place, `FlowNet.wan_inputs`:
    cat([x_t (C), mask (M), first-frame latents (C)], dim=1)  as WanImageToVideoPipeline / Fun-InP do.
With image tokens, diffusers' Wan attention takes the last 512 context tokens as text and the rest as
image (`image_context_length = len - 512`), so `FlowNet.wan_inputs` zero-pads shorter text to 512 there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from workbench.config import prediction_problem
from workbench.flow import velocity_from_x0
from workbench.models.text import WAN_TEXT_LEN
from workbench.models.weights import load_weights
from workbench.vp import VPSchedule, flow_velocity, vp_input

# 24x24x8 toy clips in pixel space: (2,4,4) patches -> 4 x 6 x 6 = 144 tokens, 1.8 M params.
_TOY = dict(patch_size=(2, 4, 4), num_attention_heads=4, attention_head_dim=32, out_channels=3, text_dim=32,
            freq_dim=64, ffn_dim=512, num_layers=6, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            eps=1e-6, image_dim=None, rope_max_seq_len=64)

PRESETS = {
    "toy": dict(_TOY, in_channels=3 + 1 + 3 + 3),            # x_t + mask + first frame + (t, y, x) positions
    "toy-no-positions": dict(_TOY, in_channels=3 + 1 + 3),   # experiments/toy/teacher_no_positions
    # Tests: the Wan-scale path (VAE latents, UMT5 text, CLIP image tokens) with tiny random modules.
    "tiny-wan": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4 + 4 + 4,
                     out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                     qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=32, added_kv_proj_dim=16,
                     rope_max_seq_len=64),
    # Wan2.1-Fun-1.3B-InP: 16 noise + 4 mask + 16 first-frame latent channels, CLIP image tokens.
    "wan2.1-fun-1.3b-inp": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                in_channels=36, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                image_dim=1280, added_kv_proj_dim=1536, rope_max_seq_len=1024),
}


# Presets whose inputs end with absolute (t, y, x) ramps in [-1, 1]. Wan's attention sees only relative
# positions (RoPE) and pixel-space toy patches carry no border cue, so without them the toy net cannot tell
# a token's frame index or the walls an object bounces off (RESULTS.md, "The teacher, investigated").
POSITION_PRESETS = {"toy"}
POSITION_CHANNELS = 3


@dataclass
class Conditioning:
    """Everything the velocity field is conditioned on, already encoded."""
    first_BCTHW: torch.Tensor        # latents of [first frame, zeros...], the clip's latent shape
    mask_BMTHW: torch.Tensor         # 1 on the first latent frame, 0 elsewhere (Fun-InP); CogVideoX's has M = 0
    text_BLD: torch.Tensor           # text tokens (zero-padded)
    image_BND: torch.Tensor | None = None  # CLIP image tokens (Wan scale) or None

    def select(self, idx) -> "Conditioning":
        return Conditioning(self.first_BCTHW[idx], self.mask_BMTHW[idx], self.text_BLD[idx],
                    None if self.image_BND is None else self.image_BND[idx])

    def with_text(self, text_BLD: torch.Tensor) -> "Conditioning":
        return Conditioning(self.first_BCTHW, self.mask_BMTHW, text_BLD, self.image_BND)

    def stacked(self, other: "Conditioning") -> "Conditioning":
        """This batch, then `other`'s, on the batch axis (one forward for both branches of guidance)."""
        cat = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
        return Conditioning(cat(self.first_BCTHW, other.first_BCTHW), cat(self.mask_BMTHW, other.mask_BMTHW),
                    cat(self.text_BLD, other.text_BLD), cat(self.image_BND, other.image_BND))

    def first_frame_error(self, x0_hat_BCTHW: torch.Tensor) -> torch.Tensor:
        """Per clip (B,): mean (x0_hat's frame 0 - the given frame's latent)^2: image-to-video's one known answer."""
        given = self.first_BCTHW[:, :, :1].to(x0_hat_BCTHW)
        return (x0_hat_BCTHW[:, :, :1] - given).float().pow(2).flatten(1).mean(1)


def build_transformer(preset: str, transformer_path: str = "", weights: str = "") -> WanTransformer3DModel:
    """A preset with random init, a local diffusers folder, and/or a safetensors state dict on top."""
    if transformer_path:
        if not Path(transformer_path).is_dir():
            raise FileNotFoundError(f"model.transformer_path: {transformer_path} is not a folder "
                                    f"(expected a local diffusers WanTransformer3DModel folder)")
        model = WanTransformer3DModel.from_pretrained(transformer_path, local_files_only=True)
    else:
        if preset not in PRESETS:
            raise KeyError(f"model.preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        model = WanTransformer3DModel(**PRESETS[preset])
    if weights:
        load_weights(model, weights, "model.weights")
    return model


PREDICTIONS = ("velocity", "x0", "epsilon", "v")   # config.ModelConfig.prediction


def build_flownet(preset: str, transformer_path: str = "", weights: str = "", prediction: str = "velocity",
                  vp_schedule: str = "") -> "FlowNet":
    """`build_transformer` wrapped as a velocity field, with the preset's input channels; with `vp_schedule` (a
    diffusers scheduler_config.json, or the folder holding it) a diffusion network seen through workbench/vp.py."""
    return FlowNet(build_transformer(preset, transformer_path, weights),
                   positions=not transformer_path and preset in POSITION_PRESETS, prediction=prediction,
                   vp=prediction_path(prediction, vp_schedule))


def prediction_path(prediction: str, vp_schedule: str) -> VPSchedule | None:
    """The VP schedule a network of either family is bridged by (None: a flow network), `prediction` checked against
    it as the config loader checks it."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"model.prediction: expected one of {PREDICTIONS}, got {prediction!r}")
    if problem := prediction_problem(prediction, vp_schedule):
        raise ValueError(f"model.prediction: {problem}")
    return read_vp_schedule(vp_schedule) if vp_schedule else None


def vp_schedule_file(path: str) -> Path:
    """model.vp_schedule: a scheduler_config.json, or the folder holding one."""
    return Path(path) / "scheduler_config.json" if Path(path).is_dir() else Path(path)


def read_vp_schedule(path: str) -> VPSchedule:
    """model.vp_schedule -> its VPSchedule (VPSchedule.from_scheduler_config)."""
    file = vp_schedule_file(path)
    try:
        return VPSchedule.from_scheduler_config(json.loads(file.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"model.vp_schedule: {file} not found (expected a diffusers scheduler_config.json)"
                                ) from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"model.vp_schedule: {file}: {e}") from None


def fun_inp_first_frame(codec, first_B3HW: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fun-InP's (first-frame latents, mask) for clips of `frames` pixel frames: the clip [first frame, zeros...]
    encoded whole, and `codec.temporal_factor` mask channels, 1 on the first latent frame (`Encoders.condition`)."""
    B, C, H, W = first_B3HW.shape
    video = torch.cat([first_B3HW[:, :, None], first_B3HW.new_zeros(B, C, frames - 1, H, W)], dim=2)
    first = codec.encode(video)                                       # B, C', T', H', W'
    mask = torch.zeros(B, codec.temporal_factor, *first.shape[2:], device=first.device)
    mask[:, :, 0] = 1.0                                               # first latent frame is given
    return first, mask


def position_ramps(x_BCTHW: torch.Tensor) -> torch.Tensor:
    """B,3,T,H,W: frame index, row and column, each scaled linearly to [-1, 1]."""
    B, _, T, H, W = x_BCTHW.shape
    axes = [torch.linspace(-1, 1, n, device=x_BCTHW.device, dtype=x_BCTHW.dtype) for n in (T, H, W)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).expand(B, -1, -1, -1, -1)


class FlowNet(torch.nn.Module):
    """Velocity field v(x_t, t, cond) on B,C,T,H,W latents. A flow network sees x_t and timestep = 1000 t (float);
    a diffusion network (`vp`) sees x_vp = (alpha + sigma) x_t and its VP timestep s, and its epsilon, v or x0
    becomes the velocity (workbench/vp.py). Beyond the ends of its schedule (t above ~0.94 for SD-style betas,
    which never reach pure noise, and t near 0) it is asked, and its prediction read, at the schedule's end
    timestep, x_vp still from the true t: as DDPM samplers start from pure noise at their last timestep."""

    def __init__(self, transformer: WanTransformer3DModel, positions: bool = False, prediction: str = "velocity",
                 vp: VPSchedule | None = None):
        super().__init__()
        self.transformer = transformer
        self.positions = positions  # append position_ramps to the inputs (POSITION_PRESETS)
        self.position_channels = POSITION_CHANNELS if positions else 0
        self.prediction = prediction  # what the transformer outputs (PREDICTIONS)
        self.vp = vp

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype the transformer's inputs are given in: that of its patch embedding's weights."""
        return self.transformer.patch_embedding.weight.dtype

    def net_timestep(self, t_B: torch.Tensor) -> torch.Tensor:
        """The transformer's timestep as a float tensor (so a tangent on t flows through the time embedding): 1000 t,
        or the VP timestep at t."""
        s = self.vp.timestep(self.vp_time(t_B)) if self.vp is not None else 1000.0 * t_B
        return s.to(self.input_dtype)

    def vp_time(self, t_B: torch.Tensor) -> torch.Tensor:
        """t within the VP schedule's range (the class docstring)."""
        return t_B.clamp(*self.vp.t_range)

    def net_input(self, x_t_BCTHW: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """What the transformer denoises: x_t, or x_vp on a VP path."""
        return vp_input(x_t_BCTHW, t_B) if self.vp is not None else x_t_BCTHW

    def wan_inputs(self, x_t_BCTHW: torch.Tensor, cond: Conditioning):
        """(cat([x_t, mask, first(, positions)]) on channels, text tokens, image tokens or None) in the weights' dtype."""
        dtype = self.input_dtype
        parts = [x_t_BCTHW, cond.mask_BMTHW.to(x_t_BCTHW), cond.first_BCTHW.to(x_t_BCTHW)]
        if self.positions:
            parts.append(position_ramps(x_t_BCTHW))
        inp = torch.cat(parts, dim=1)
        text = cond.text_BLD
        if cond.image_BND is not None and text.shape[1] != WAN_TEXT_LEN:
            if text.shape[1] > WAN_TEXT_LEN:
                raise ValueError(f"with image tokens, text must be at most {WAN_TEXT_LEN} tokens, got {text.shape[1]}")
            text = torch.nn.functional.pad(text, (0, 0, 0, WAN_TEXT_LEN - text.shape[1]))  # zeros, as UMT5 pads
        image = None if cond.image_BND is None else cond.image_BND.to(dtype)
        return inp.to(dtype), text.to(dtype), image

    def velocity(self, out_BCTHW: torch.Tensor, x_t_BCTHW: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """The transformer's output as the velocity F: as is, from its x0 estimate (flow.velocity_from_x0), or
        bridged from a VP prediction (vp.flow_velocity)."""
        out = out_BCTHW.to(x_t_BCTHW.dtype)
        if self.vp is not None:
            return flow_velocity(out, vp_input(x_t_BCTHW, t_B), self.vp_time(t_B), self.prediction)
        return velocity_from_x0(x_t_BCTHW, out, t_B) if self.prediction == "x0" else out

    def forward(self, x_t_BCTHW: torch.Tensor, t_B: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        inp, text, image = self.wan_inputs(self.net_input(x_t_BCTHW, t_B), cond)
        out = self.transformer(inp, self.net_timestep(t_B), text, encoder_hidden_states_image=image, return_dict=False)[0]
        return self.velocity(out, x_t_BCTHW, t_B)


def block_features(net: FlowNet, x_t_BCTHW: torch.Tensor, t_B: torch.Tensor, cond: Conditioning,
                   blocks: tuple[int, ...]) -> list[torch.Tensor]:
    """The outputs (B, L, D) of transformer blocks `blocks` in net's forward at (x_t, t, cond), by forward hooks;
    with the graph when called with grad (PCM's discriminator reads the frozen teacher's features this way)."""
    out: dict[int, torch.Tensor] = {}
    hooks = [net.transformer.blocks[i].register_forward_hook(lambda mod, args, o, i=i: out.__setitem__(i, o))
             for i in blocks]
    try:
        net(x_t_BCTHW, t_B, cond)
    finally:
        for h in hooks:
            h.remove()
    return [out[i] for i in blocks]

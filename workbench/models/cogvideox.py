"""The CogVideoX image-to-video backbone: diffusers `CogVideoXTransformer3DModel` as the workbench's velocity field.

CogVideoX-5B-I2V is a diffusion network (v-prediction on CogVideoX's VP schedule): with `model.vp_schedule` (its
scheduler_config.json) and `model.prediction: v` it is bridged to the flow convention by workbench/vp.py exactly as
`FlowNet` bridges any VP network (its schedule read as CogVideoXDDIMScheduler computes it:
VPSchedule.from_scheduler_config); without them it is a flow network (a flow student of a CogVideoX teacher).
Its image conditioning follows `diffusers.CogVideoXImageToVideoPipeline`, in two places as Wan's does:
  `cogvideox_first_frame` (encoder side, `prepare_latents`): the first frame encoded alone by the VAE, scaled by its
      scaling factor, zero-padded to the clip's latent frame count; no mask channels.
  `CogVideoXFlowNet.cogvideox_inputs` (network side, `__call__`'s loop): cat([x, first-frame latents]) on channels in
      CogVideoX's (B, T, C, H, W) layout, T5 tokens, 3-D rotary embeddings where the config uses them, ofs = 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import CogVideoXTransformer3DModel

from workbench.models.wan import Conditioning, FlowNet, prediction_path
from workbench.models.weights import load_weights

PRESETS = {
    # Tests: tiny random, 32x32 px clips of 9 frames (the learned positional embedding fixes the size: 4x4x3 latents).
    "tiny-cogvideox": dict(num_attention_heads=2, attention_head_dim=16, in_channels=4 + 4, out_channels=4,
                           time_embed_dim=8, text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4,
                           sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
                           use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    # THUDM/CogVideoX-5b-I2V transformer/config.json: 16 noise + 16 first-frame latent channels, T5-XXL text (226
    # tokens), RoPE and a learned positional embedding (so 49 frames at 480x720 only: 13 x 60 x 90 latents).
    "cogvideox-5b-i2v": dict(num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16,
                             flip_sin_to_cos=True, freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42,
                             dropout=0.0, attention_bias=True, sample_width=90, sample_height=60, sample_frames=49,
                             patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                             activation_fn="gelu-approximate", timestep_activation_fn="silu",
                             norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
                             temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True,
                             use_learned_positional_embeddings=True),
}


def build_cogvideox_transformer(preset: str, transformer_path: str = "",
                                weights: str = "") -> CogVideoXTransformer3DModel:
    """A preset with random init, or a local diffusers folder; and/or a safetensors state dict on top."""
    if transformer_path:
        config = Path(transformer_path) / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"model.transformer_path: {transformer_path} is not a folder with a config.json "
                                    f"(expected a local diffusers CogVideoXTransformer3DModel folder)")
        name = json.loads(config.read_text()).get("_class_name")
        if name != "CogVideoXTransformer3DModel":
            raise ValueError(f"model.transformer_path: {transformer_path} holds a {name}, but model.preset={preset} "
                             f"expects a CogVideoXTransformer3DModel")
        model = CogVideoXTransformer3DModel.from_pretrained(transformer_path, local_files_only=True)
    else:
        model = CogVideoXTransformer3DModel(**PRESETS[preset])
    if model.config.patch_size_t is not None:
        raise ValueError(f"model.transformer_path: {transformer_path} is CogVideoX 1.5 (patch_size_t="
                         f"{model.config.patch_size_t}); expected CogVideoX 1.0 (CogVideoX-5b-I2V), patch_size_t null")
    if weights:
        load_weights(model, weights, "model.weights")
    return model


def build_cogvideox_flownet(preset: str, transformer_path: str = "", weights: str = "", prediction: str = "velocity",
                            vp_schedule: str = "") -> CogVideoXFlowNet:
    """`build_cogvideox_transformer` as a velocity field; with `vp_schedule` a diffusion network bridged by vp.py."""
    return CogVideoXFlowNet(build_cogvideox_transformer(preset, transformer_path, weights), prediction=prediction,
                            vp=prediction_path(prediction, vp_schedule))


def cogvideox_first_frame(codec, first_B3HW: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-frame latents, a mask of no channels) for clips of `frames` pixel frames, as
    CogVideoXImageToVideoPipeline.prepare_latents builds `image_latents`: the frame encoded alone (scaled, in
    codec.encode), then zeros to (frames - 1) // 4 + 1 latent frames (`latent_padding`)."""
    first = codec.encode(first_B3HW[:, :, None])                       # B, C, 1, H', W'
    latent_frames = (frames - 1) // codec.temporal_factor + 1
    first = torch.nn.functional.pad(first, (0, 0, 0, 0, 0, latent_frames - 1))
    B, _, T, H, W = first.shape
    return first, first.new_zeros(B, 0, T, H, W)


def rotary_embeddings(config, frames: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of CogVideoX 1.0's 3-D RoPE on a latent grid frames x height x width
    (CogVideoXImageToVideoPipeline._prepare_rotary_positional_embeddings, patch_size_t None)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid
    p = config.patch_size
    grid = (height // p, width // p)
    crops = get_resize_crop_region_for_grid(grid, config.sample_width // p, config.sample_height // p)
    return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops, grid_size=grid,
                                   temporal_size=frames, device=device)


class CogVideoXFlowNet(FlowNet):
    """`FlowNet` (velocity field on B,C,T,H,W latents; its VP bridge: `net_input`, `net_timestep`, `velocity`) over a
    `CogVideoXTransformer3DModel`, whose inputs `cogvideox_inputs` assembles."""

    @property
    def input_dtype(self) -> torch.dtype:
        return self.transformer.patch_embed.proj.weight.dtype

    def cogvideox_inputs(self, x_BCTHW: torch.Tensor, cond: Conditioning) -> dict:
        """The transformer's keyword inputs but the timestep, in the weights' dtype, as the pipeline's loop makes them:
        `torch.cat([latent_model_input, latent_image_input], dim=2)` on (B, T, C, H, W), the T5 tokens, the rotary
        embeddings where `use_rotary_positional_embeddings`, `ofs` = 2 where the config has `ofs_embed_dim`."""
        tc, dtype = self.transformer.config, self.input_dtype
        hidden_BTCHW = torch.cat([x_BCTHW, cond.first_BCTHW.to(x_BCTHW)], dim=1).transpose(1, 2)
        T, H, W = x_BCTHW.shape[2:]
        rotary = rotary_embeddings(tc, T, H, W, x_BCTHW.device) if tc.use_rotary_positional_embeddings else None
        return {"hidden_states": hidden_BTCHW.to(dtype), "encoder_hidden_states": cond.text_BLD.to(dtype),
                "image_rotary_emb": rotary, "ofs": None if tc.ofs_embed_dim is None else x_BCTHW.new_full((1,), 2.0)}

    def forward(self, x_t_BCTHW: torch.Tensor, t_B: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        inputs = self.cogvideox_inputs(self.net_input(x_t_BCTHW, t_B), cond)
        out_BTCHW = self.transformer(**inputs, timestep=self.net_timestep(t_B), return_dict=False)[0]
        return self.velocity(out_BTCHW.transpose(1, 2), x_t_BCTHW, t_B)

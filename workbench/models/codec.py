"""Codecs between pixels (B,3,T,H,W in [-1, 1]) and the latents the flow lives in.

`PixelCodec` is the identity (the toy: Wan's patch embedding patchifies pixels directly).
`WanVAECodec` wraps diffusers `AutoencoderKLWan` from a local folder, with Wan's per-channel
latent normalisation; it compresses time by 4 (1 + 4k frames -> 1 + k latent frames).
`CogVideoXVAECodec` wraps `AutoencoderKLCogVideoX` with CogVideoX's one scaling factor (also 1 + 4k -> 1 + k).
Both take the posterior's mode, so that a clip has one latent.
"""
from __future__ import annotations

from pathlib import Path

import torch


class PixelCodec:
    channels = 3
    temporal_factor = 1   # mask channels = frames folded into one latent frame

    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return video_BCTHW

    def decode(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        return latents_BCTHW.clamp(-1, 1)


class WanVAECodec:
    def __init__(self, vae):
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.channels = cfg.z_dim
        self.temporal_factor = 2 ** sum(cfg.temperal_downsample)
        self.mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)

    @classmethod
    def from_folder(cls, path: str, dtype=torch.float32) -> "WanVAECodec":
        from diffusers import AutoencoderKLWan
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model.vae_path: {path} is not a folder (expected a local AutoencoderKLWan folder)")
        return cls(AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True))

    @torch.no_grad()
    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(video_BCTHW.to(self.vae.dtype)).latent_dist.mode()
        return ((z.float() - self.mean.to(z.device)) / self.std.to(z.device))

    def decode(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        """Differentiable in the latents (DA decodes x0_hat); callers that sample wrap it in no_grad."""
        z = latents_BCTHW.float() * self.std.to(latents_BCTHW.device) + self.mean.to(latents_BCTHW.device)
        return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)


class CogVideoXVAECodec:
    """latents = scaling_factor * the posterior's mode; decoded at latents / scaling_factor
    (CogVideoXImageToVideoPipeline.prepare_latents and decode_latents)."""

    def __init__(self, vae):
        cfg = vae.config
        if cfg.invert_scale_latents:   # CogVideoX 1.5 I2V: the pipeline scales its first frame by 1 / scaling_factor
            raise ValueError("model.vae_path: an AutoencoderKLCogVideoX with invert_scale_latents (CogVideoX 1.5) is "
                             "not supported: expected CogVideoX 1.0's VAE (CogVideoX-5b-I2V)")
        self.vae = vae.eval().requires_grad_(False)
        self.channels = cfg.latent_channels
        self.temporal_factor = cfg.temporal_compression_ratio
        self.scale = cfg.scaling_factor

    @classmethod
    def from_folder(cls, path: str, dtype=torch.float32) -> CogVideoXVAECodec:
        from diffusers import AutoencoderKLCogVideoX
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model.vae_path: {path} is not a folder (expected a local AutoencoderKLCogVideoX "
                                    f"folder)")
        return cls(AutoencoderKLCogVideoX.from_pretrained(path, torch_dtype=dtype, local_files_only=True))

    @torch.no_grad()
    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(video_BCTHW.to(self.vae.dtype)).latent_dist.mode()
        return self.scale * z.float()

    def decode(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        """Differentiable in the latents (DA decodes x0_hat); callers that sample wrap it in no_grad."""
        z = latents_BCTHW.float() / self.scale
        return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)

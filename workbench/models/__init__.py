"""Build the backbone at any scale: a trainable `FlowNet` and its frozen `Encoders` (which build a `Conditioning`).

The preset names the family: Wan (models/wan.py: Wan VAE, UMT5, CLIP) or CogVideoX (models/cogvideox.py: its VAE, T5).
"""
from __future__ import annotations

from pathlib import Path

import torch

from workbench.config import ModelConfig, load_section
from workbench.folders import saved_config
from workbench.models.codec import CogVideoXVAECodec, PixelCodec, WanVAECodec
from workbench.models.cogvideox import PRESETS as COGVIDEOX_PRESETS
from workbench.models.cogvideox import CogVideoXFlowNet, build_cogvideox_flownet, cogvideox_first_frame
from workbench.models.text import CLIPImageEncoder, T5TextEncoder, ToyTextEncoder, UMT5TextEncoder
from workbench.models.lora import add_lora
from workbench.models.wan import PRESETS as WAN_PRESETS
from workbench.models.wan import Conditioning, FlowNet, build_flownet, fun_inp_first_frame, prediction_path
from workbench.models.weights import load_weights, tensor_names

__all__ = ["COGVIDEOX_PRESETS", "Conditioning", "Encoders", "FlowNet", "PRESETS", "build_backbone", "build_codec",
           "check_prediction_fits", "on_trained_path"]

PRESETS = {**WAN_PRESETS, **COGVIDEOX_PRESETS}   # model.preset -> its transformer's config (either family)


class Encoders:
    """The frozen parts: pixels <-> latents, captions -> text tokens, first frame -> image tokens (a `Conditioning`);
    `first_frame(codec, first_B3HW, frames) -> (first-frame latents, mask)` is the backbone family's recipe
    (wan.fun_inp_first_frame, cogvideox.cogvideox_first_frame)."""

    def __init__(self, codec, text_encoder, image_encoder=None, first_frame=fun_inp_first_frame):
        self.codec, self.text_encoder, self.image_encoder = codec, text_encoder, image_encoder
        self.first_frame = first_frame

    def to(self, device) -> "Encoders":
        """Move the frozen networks (VAE, UMT5, CLIP) to `device`; the toy parts have none."""
        for part in (getattr(self.codec, "vae", None), getattr(self.text_encoder, "model", None),
                     getattr(self.image_encoder, "model", None)):
            if part is not None:
                part.to(device)
        return self

    def encode_video(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(video_BCTHW)

    def decode(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents_BCTHW)

    def condition(self, first_B3HW: torch.Tensor, captions: list[str], frames: int) -> Conditioning:
        """The conditioning of clips of `frames` pixel frames starting at `first_B3HW`."""
        first, mask = self.first_frame(self.codec, first_B3HW, frames)
        text = self.text_encoder(list(captions)).to(first.device)
        image = None if self.image_encoder is None else self.image_encoder(first_B3HW).to(first.device)
        return Conditioning(first, mask, text, image)

    def null_text(self, batch_size: int) -> torch.Tensor:
        """Tokens of the empty caption: the unconditional branch of classifier-free guidance."""
        return self.text_encoder([""] * batch_size)

    def prepare(self, video_BCTHW: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, Conditioning]:
        """A batch of clips -> (x0 latents B,C',T',H',W', its conditioning)."""
        with torch.no_grad():
            x0 = self.encode_video(video_BCTHW)
            cond = self.condition(video_BCTHW[:, :, 0], captions, video_BCTHW.shape[2])
        return x0, cond


def build_backbone(cfg: ModelConfig, cache: str = "") -> tuple[FlowNet, Encoders]:
    """The network and its frozen encoders; with `cache` (data.cache) encoders that read that folder instead of
    running the VAE encoder, UMT5 and CLIP (models/cached.py), which are then never built."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]  # a choice the loader checked
    with_lora = bool(cfg.weights) and any("lora_" in k for k in tensor_names(cfg.weights, "model.weights"))
    cogvideox = cfg.preset in COGVIDEOX_PRESETS
    net = (build_cogvideox_flownet if cogvideox else build_flownet)(
        cfg.preset, cfg.transformer_path, "" if with_lora else cfg.weights, cfg.prediction, cfg.vp_schedule)
    if cache:
        from workbench.models.cached import cached_encoders
        encoders, text, image = cached_encoders(cfg, cache)
        codec = encoders.codec
    else:
        codec = build_codec(cfg, dtype)
        text = _text_encoder(cfg, net, dtype)
        image = CLIPImageEncoder(cfg.image_encoder_path, dtype) if cfg.image_encoder_path else None
        encoders = Encoders(codec, text, image, cogvideox_first_frame if cogvideox else fun_inp_first_frame)
    _check_parts_fit(cfg, net, codec, text, image)
    if not cfg.reparameterize:
        check_prediction_fits(cfg.weights, cfg.prediction, vp=bool(cfg.vp_schedule))
    if with_lora and not cfg.lora.rank:
        raise ValueError(f"model.weights: {cfg.weights} holds a LoRA adapter; set model.lora.rank (and alpha, targets) "
                         f"as its run did")
    if cfg.lora.rank:  # base frozen, a fresh adapter (B = 0: the base model's function) trained or loaded
        add_lora(net.transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets)
    if with_lora:      # a checkpoint of a LoRA run holds base + adapter
        load_weights(net.transformer, cfg.weights, "model.weights")
    return net, encoders


def build_codec(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    """The codec of model.vae_path in the preset's family (CogVideoX's or Wan's VAE); the pixel codec without one."""
    if not cfg.vae_path:
        return PixelCodec()
    return (CogVideoXVAECodec if cfg.preset in COGVIDEOX_PRESETS else WanVAECodec).from_folder(cfg.vae_path, dtype)


def _text_encoder(cfg: ModelConfig, net: FlowNet, dtype: torch.dtype):
    """model.text_encoder_path's encoder in the preset's family (T5 at CogVideoX's text length, or UMT5); the toy
    encoder at the transformer's text width without one."""
    tc = net.transformer.config
    if isinstance(net, CogVideoXFlowNet):
        if cfg.text_encoder_path:
            return T5TextEncoder(cfg.text_encoder_path, tc.max_text_seq_length, dtype)
        return ToyTextEncoder(dim=tc.text_embed_dim, max_len=tc.max_text_seq_length)
    return UMT5TextEncoder(cfg.text_encoder_path, dtype) if cfg.text_encoder_path else ToyTextEncoder(dim=tc.text_dim)


def trained_path(weights: str) -> tuple[str, str] | None:
    """(model.prediction, model.vp_schedule) the weights were trained with, from their run's saved config; None where
    they have none (a bare safetensors file)."""
    saved = saved_config(Path(weights).parent) if weights else None
    if saved is None:
        return None
    trained = load_section(saved, "model", ModelConfig)  # saved before the keys existed: the defaults
    return trained.prediction, trained.vp_schedule


def check_prediction_fits(weights: str, prediction: str, key: str = "model.weights", vp: bool = False) -> None:
    """Weights trained to predict x0 read as a velocity, or a diffusion (VP) network read as a flow one (or the
    reverse), sample noise: refuse, naming both (model.reparameterize starts a network from them on purpose)."""
    trained = trained_path(weights)
    if trained is not None and (trained[0], bool(trained[1])) != (prediction, vp):
        path = lambda p, v: f"model.prediction={p} on a {'VP' if v else 'flow'} path"  # noqa: E731
        raise ValueError(f"{key}: {weights} was trained with {path(trained[0], trained[1])} "
                         f"({saved_config(Path(weights).parent)}), but this config has {path(prediction, vp)}; "
                         f"set model.reparameterize=true to start from them on purpose")


def on_trained_path(net: FlowNet, weights: str) -> FlowNet:
    """`net` (weights loaded) seen on the path its `weights` were trained on, where their run's config says another
    (a VP teacher of a flow student): the same transformer, that run's prediction and VP schedule."""
    trained = trained_path(weights)
    if trained is None:
        return net
    prediction, vp_schedule = trained
    try:
        vp = prediction_path(prediction, vp_schedule)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{weights}: its run's {e}") from None
    same_vp = (vp is None) == (net.vp is None) and (vp is None or torch.equal(vp.alphas_cumprod, net.vp.alphas_cumprod))
    if prediction == net.prediction and same_vp:
        return net
    return type(net)(net.transformer, positions=net.positions, prediction=prediction, vp=vp)


def _check_parts_fit(cfg: ModelConfig, net: FlowNet, codec, text, image) -> None:
    """Fail at build time, naming the config keys, where the parts would otherwise fail (or mix) mid-forward."""
    tc = net.transformer.config
    arch = f"model.transformer_path={cfg.transformer_path}" if cfg.transformer_path else f"model.preset={cfg.preset}"
    src = f"model.vae_path={cfg.vae_path}" if cfg.vae_path else "the pixel codec (no model.vae_path)"
    cogvideox = isinstance(net, CogVideoXFlowNet)
    n_mask, n_pos = 0 if cogvideox else codec.temporal_factor, net.position_channels
    want_in = 2 * codec.channels + n_mask + n_pos  # x_t + mask (Wan) + first-frame latents (+ positions)
    if (tc.in_channels, tc.out_channels) != (want_in, codec.channels):
        raise ValueError(f"{arch} takes in/out channels {tc.in_channels}/{tc.out_channels}, but {src} gives "
                         f"{codec.channels} latent channels: expected {want_in}/{codec.channels} "
                         f"({codec.channels}{f' + {n_mask} mask' if n_mask else ''} + {codec.channels}"
                         f"{f' + {n_pos} positions' if n_pos else ''})")
    text_dim = tc.text_embed_dim if cogvideox else tc.text_dim
    if text.dim != text_dim:
        raise ValueError(f"model.text_encoder_path: text tokens of width {text.dim} do not fit {arch} "
                         f"({'text_embed_dim' if cogvideox else 'text_dim'}={text_dim})")
    if cogvideox:
        if image is not None:
            raise ValueError(f"model.image_encoder_path: {arch} is CogVideoX, which takes no image tokens (its first "
                             f"frame enters as latents); expected it empty")
        return
    if image is None and tc.image_dim is not None:
        raise ValueError(f"{arch} takes CLIP image tokens (image_dim={tc.image_dim}); set model.image_encoder_path")
    if image is not None and image.dim != tc.image_dim:
        raise ValueError(f"model.image_encoder_path: image tokens of width {image.dim} do not fit {arch} "
                         f"(image_dim={tc.image_dim})")

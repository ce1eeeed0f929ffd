"""Encoders that read a cache (`data.cache`, data/cache.py) instead of running the VAE encoder, UMT5 and CLIP.

`CachedEncoders` has `Encoders`' interface: `prepare(video, captions)` returns the cached x0 latents and
`Conditioning` of the batch's clips (found by their pixels' digest), `condition(first, captions, frames)` those of
a TA pair's first frame, `null_text(B)` the cached empty caption. A caption replaced by "" (caption dropout) gets
the empty caption's tokens, as the live text encoder gives. Kept: the codec's decoder (DA decodes x0_hat, sample
sheets decode samples); the VAE's encoder is dropped after loading, and no text or image encoder is built.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from workbench.data.cache import CacheIndex, digest
from workbench.models.wan import Conditioning


class CachedEncoders:
    """The frozen parts, served from a cache folder; only the decoder is a network."""

    text_encoder = image_encoder = None     # nothing to move or run

    def __init__(self, codec, index: CacheIndex):
        self.codec, self.index = codec, index
        self.device = torch.device("cpu")

    def to(self, device) -> CachedEncoders:
        if getattr(self.codec, "vae", None) is not None:
            self.codec.vae.to(device)
        self.device = torch.device(device)
        return self

    def decode(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents_BCTHW)

    def encode_video(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self._rows(video_BCTHW)[0]["x0"].to(video_BCTHW.device)

    def null_text(self, batch_size: int) -> torch.Tensor:
        """Tokens of the empty caption (CPU, as the live text encoder returns them)."""
        return self.index.null_text.repeat(batch_size, 1, 1)

    def prepare(self, video_BCTHW: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, Conditioning]:
        """A batch of cached clips -> (x0 latents B,C',T',H',W', its conditioning), on the video's device."""
        rows, items = self._rows(video_BCTHW)
        return rows["x0"].to(video_BCTHW.device), self._conditioning(rows, items, captions, video_BCTHW.device)

    def condition(self, first_B3HW: torch.Tensor, captions: list[str], frames: int) -> Conditioning:
        """The conditioning of cached clips given by their first frames (TA's pairs)."""
        rows, items = self.index.rows([digest(f) for f in first_B3HW], by_first=True)  # clips of the config's frames
        return self._conditioning(rows, items, captions, first_B3HW.device)

    def _rows(self, video_BCTHW: torch.Tensor):
        return self.index.rows([digest(v) for v in video_BCTHW])

    def _conditioning(self, rows: dict, items: list[dict], captions: list[str], device) -> Conditioning:
        text = rows["text"].clone()
        for b, (item, caption) in enumerate(zip(items, captions)):
            if caption == item["caption"]:
                continue
            if caption != "":
                raise ValueError(f"data.cache: batch item {b} has caption {caption!r}, but the cache holds "
                                 f"{item['caption']!r} for its clip (only the empty caption is served besides)")
            text[b] = self.index.null_text[0]
        image = rows.get("image")
        return Conditioning(rows["first"].to(device), rows["mask"].to(device), text.to(device),
                            None if image is None else image.to(device))


def cached_encoders(cfg, folder: str) -> tuple[CachedEncoders, SimpleNamespace, SimpleNamespace | None]:
    """(CachedEncoders for `folder`, and stand-ins carrying the text / image token widths for the build checks);
    refused, naming the key, when the cache was made with other model settings than `cfg` (a ModelConfig)."""
    index = CacheIndex(folder, cfg)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    from workbench.models import build_codec          # the preset family's VAE (Wan's or CogVideoX's)
    codec = build_codec(cfg, dtype)
    if cfg.vae_path:                                  # the decoder stays (DA, sheets); the encoder's job is done
        codec.vae.encoder = codec.vae.quant_conv = None
    text = SimpleNamespace(dim=index.shapes["text"][-1])
    image = None if index.shapes["image"] is None else SimpleNamespace(dim=index.shapes["image"][-1])
    return CachedEncoders(codec, index), text, image

"""Frozen text and image encoders.

Toy scale: `ToyTextEncoder`, a fixed word embedding (seeded, never trained, nothing downloaded) plus a
sinusoidal position code, zero-padded like Wan's UMT5 tokens. Wan scale: UMT5 and CLIP vision from
local folders. With image tokens, Wan's attention takes the last 512 text tokens as text, so text is
always padded to exactly 512 tokens there (and `FlowNet` pads any shorter text given with image tokens).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from workbench.data.synthetic import COLOURS, DIRECTIONS, SHAPES, SPEED_WORDS

WAN_TEXT_LEN = 512


def _need_dir(path: str, key: str, what: str) -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{key}: {path} is not a folder (expected a local {what} folder)")


class ToyTextEncoder:
    """Caption -> (L, dim) tokens from a fixed vocabulary; the empty caption gives all zeros."""

    def __init__(self, dim: int = 32, max_len: int = 16, seed: int = 1234):
        words = ["a", "an", "and", "moving", *COLOURS, *SHAPES, *DIRECTIONS, *SPEED_WORDS]
        self.vocab = {w: i + 1 for i, w in enumerate(dict.fromkeys(words))}  # 0 = unknown word
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(len(self.vocab) + 1, dim, generator=g)
        pos = torch.arange(max_len)[:, None] * torch.exp(-math.log(100.0) * torch.arange(0, dim, 2) / dim)
        self.position = torch.zeros(max_len, dim)
        self.position[:, 0::2], self.position[:, 1::2] = torch.sin(pos), torch.cos(pos)
        self.dim, self.max_len = dim, max_len

    def __call__(self, captions: list[str]) -> torch.Tensor:
        out = torch.zeros(len(captions), self.max_len, self.dim)
        for b, caption in enumerate(captions):
            ids = [self.vocab.get(w, 0) for w in re.findall(r"[a-z]+", caption.lower())][: self.max_len]
            if ids:
                out[b, : len(ids)] = self.table[ids] + 0.5 * self.position[: len(ids)]
        return out


class UMT5TextEncoder:
    """Wan's text encoder from a local folder holding the UMT5 encoder and its tokenizer."""

    def __init__(self, path: str, dtype=torch.float32, max_len: int = WAN_TEXT_LEN):
        from transformers import AutoTokenizer, UMT5EncoderModel
        _need_dir(path, "model.text_encoder_path", "UMT5EncoderModel + tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(path, dtype=dtype, local_files_only=True).eval()
        self.max_len, self.dim = max_len, self.model.config.d_model

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        tok = self.tokenizer(captions, padding="max_length", max_length=self.max_len, truncation=True,
                             return_tensors="pt")
        ids, mask = tok.input_ids.to(self.model.device), tok.attention_mask.to(self.model.device)
        hidden = self.model(ids, mask).last_hidden_state.float()
        return hidden * mask[..., None]  # zero beyond each caption, as WanPipeline does


class CLIPImageEncoder:
    """First frame -> CLIP vision penultimate hidden states (B, 257, 1280 for ViT-H/14)."""

    def __init__(self, path: str, dtype=torch.float32):
        from transformers import CLIPVisionModel
        _need_dir(path, "model.image_encoder_path", "CLIPVisionModel")
        self.model = CLIPVisionModel.from_pretrained(path, dtype=dtype, local_files_only=True).eval()
        cfg = self.model.config
        self.size, self.dim = cfg.image_size, cfg.hidden_size
        self.mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, first_B3HW: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate((first_B3HW.float() + 1) / 2, size=(self.size, self.size),
                                            mode="bicubic", align_corners=False)
        x = ((x - self.mean.to(x.device)) / self.std.to(x.device)).to(self.model.device, self.model.dtype)
        return self.model(pixel_values=x, output_hidden_states=True).hidden_states[-2].float()

"""Frozen text and image encoders.

Toy scale: `ToyTextEncoder`, a fixed word embedding (seeded, never trained, nothing downloaded) plus a
sinusoidal position code, zero-padded like Wan's UMT5 tokens. Wan scale: UMT5 and CLIP vision from
local folders. With image tokens, Wan's attention takes the last 512 text tokens as text, so text is
always padded to exactly 512 tokens there (and `FlowNet` pads any shorter text given with image tokens).
CogVideoX scale: T5 from a local folder, `max_text_seq_length` (226) tokens as its pipeline encodes them.
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


class T5TextEncoder:
    """CogVideoX's text encoder from a local folder holding `T5EncoderModel` and its tokenizer: captions padded to
    `max_len` tokens (the transformer's max_text_seq_length) and encoded with no attention mask, the padding's states
    kept (CogVideoXImageToVideoPipeline._get_t5_prompt_embeds)."""

    def __init__(self, path: str, max_len: int, dtype=torch.float32):
        from transformers import AutoTokenizer, T5EncoderModel
        _need_dir(path, "model.text_encoder_path", "T5EncoderModel + tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(path, dtype=dtype, local_files_only=True).eval()
        self.max_len, self.dim = max_len, self.model.config.d_model

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.max_len, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        return self.model(ids.to(self.model.device))[0].float()


CLIP_PROCESSOR_FILE = "preprocessor_config.json"


def clip_processor(path: str, size: int):
    """The `CLIPImageProcessor` (PIL backend) of the CLIP folder `path`: its own preprocessor_config.json, else that
    of the sibling image_processor/ where `path` is a diffusers pipeline's image_encoder/, else Wan's own
    preprocessing (the frame stretched to size x size, bicubic, no crop; CLIP mean and std)."""
    # the PIL backend, not torchvision's (which CLIPImageProcessor means where torchvision is installed): the export
    # ships this class by name, so workbench and pipeline resize alike wherever they run
    from transformers import CLIPImageProcessorPil
    folder = Path(path)
    for where in (folder, folder.parent / "image_processor" if folder.name == "image_encoder" else None):
        if where is not None and (where / CLIP_PROCESSOR_FILE).is_file():
            return CLIPImageProcessorPil.from_pretrained(where, local_files_only=True)
    return CLIPImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False, resample=3)


class CLIPImageEncoder:
    """First frame -> CLIP vision penultimate hidden states (B, 257, 1280 for ViT-H/14).

    The frame goes through `processor` (see `clip_processor`) as the 8-bit RGB image a `WanImageToVideoPipeline` user
    passes, so the exported pipeline, which runs the same processor, gets the same tokens at every frame size.
    """

    def __init__(self, path: str, dtype=torch.float32):
        from transformers import CLIPVisionModel
        _need_dir(path, "model.image_encoder_path", "CLIPVisionModel")
        self.model = CLIPVisionModel.from_pretrained(path, dtype=dtype, local_files_only=True).eval()
        cfg = self.model.config
        self.size, self.dim = cfg.image_size, cfg.hidden_size
        self.processor = clip_processor(path, self.size)
        got = tuple(self._pixels(torch.zeros(1, 3, self.size + 3, 2 * self.size)).shape[-2:])
        if got != (self.size, self.size):
            raise ValueError(f"model.image_encoder_path: the image processor of {path} makes {got[0]}x{got[1]} "
                             f"images, but its CLIP takes {self.size}x{self.size}")

    def _pixels(self, first_B3HW: torch.Tensor) -> torch.Tensor:
        """[-1, 1] frames -> 0..255 RGB images (exact for frames decoded from video files) -> processed pixel_values."""
        import PIL.Image
        rgb = ((first_B3HW.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        images = [PIL.Image.fromarray(x.permute(1, 2, 0).numpy()) for x in rgb]
        return self.processor(images=images, return_tensors="pt").pixel_values

    @torch.no_grad()
    def __call__(self, first_B3HW: torch.Tensor) -> torch.Tensor:
        x = self._pixels(first_B3HW).to(self.model.device, self.model.dtype)
        return self.model(pixel_values=x, output_hidden_states=True).hidden_states[-2].float()

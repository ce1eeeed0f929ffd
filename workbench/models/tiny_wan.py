"""Tiny random Wan-scale parts saved as local folders, built from configs: nothing is downloaded (the tests'
Wan-scale models, and experiments/tiny-wan's: `python -m workbench tiny-wan --out models/tiny-wan`).

Each `save_*` writes one `save_pretrained` folder that the real loaders in `workbench.models` read;
`save_tiny_wan` writes all four and returns the `ModelConfig` keyword arguments that point at them.
Sizes follow the "tiny-wan" preset: z_dim 4 (in_channels 4 + 4 mask + 4 = 12), text_dim 32, image_dim 32.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from workbench.models.wan import PRESETS

TINY = PRESETS["tiny-wan"]
Z_DIM = TINY["out_channels"]
WORDS = ["a", "red", "blue", "green", "ball", "cat", "square", "moving", "left", "right", "up", "down",
         "slowly", "fast", "and", "the"]
LATENTS_MEAN = [0.1, -0.2, 0.3, 0.0]   # distinct per channel, so the per-channel normalisation is tested
LATENTS_STD = [1.5, 0.5, 2.0, 1.0]
CLIP_SIZE, CLIP_FRAMES = 32, 9        # the clips `python -m workbench tiny-wan` writes: 32 px, 1 + 4 k frames


@contextmanager
def seeded(seed: int):
    """Deterministic random init that leaves the caller's global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def save_transformer(folder: Path) -> Path:
    """`WanTransformer3DModel` of the "tiny-wan" preset (2 layers, width 16, CLIP image branch)."""
    from diffusers import WanTransformer3DModel
    with seeded(0):
        model = WanTransformer3DModel(**TINY)
    model.save_pretrained(folder)
    return folder


def save_vae(folder: Path) -> Path:
    """`AutoencoderKLWan` with Wan's layout at width 8: space / 8, time 1 + 4k -> 1 + k (temporal downsample F,T,T)."""
    from diffusers import AutoencoderKLWan
    with seeded(1):
        vae = AutoencoderKLWan(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True], latents_mean=LATENTS_MEAN,
                               latents_std=LATENTS_STD)
    vae.save_pretrained(folder)
    return folder


def save_text_encoder(folder: Path) -> Path:
    """`UMT5EncoderModel` (d_model = the preset's text_dim) and a word-level tokenizer built in code.

    Like T5's tokenizer it appends `</s>` and pads with `<pad>` (id 0), so the empty caption is one token.
    """
    from transformers import UMT5Config, UMT5EncoderModel
    vocab = save_word_tokenizer(folder, 512)
    with seeded(2):
        model = UMT5EncoderModel(UMT5Config(vocab_size=vocab, d_model=TINY["text_dim"], d_kv=8, d_ff=64,
                                            num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1,
                                            decoder_start_token_id=0))
    model.save_pretrained(folder)
    return folder


def save_word_tokenizer(folder: Path, max_length: int) -> int:
    """A word-level tokenizer over WORDS, built in code (T5's conventions: `</s>` appended, `<pad>` = id 0), saved in
    `folder`; returns its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=max_length).save_pretrained(folder)
    return len(vocab)


def save_image_encoder(folder: Path, processor: bool = True) -> Path:
    """`CLIPVisionModel` (hidden_size = the preset's image_dim), 32 px, patch 8: 1 + 16 = 17 tokens; with
    `processor`, beside it the image processor of Wan2.1's diffusers folders at 32 px (shortest edge to 32, centre
    crop 32x32, bicubic, CLIP mean/std)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel
    with seeded(3):
        model = CLIPVisionModel(CLIPVisionConfig(hidden_size=TINY["image_dim"], intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                                 patch_size=8))
    model.save_pretrained(folder)
    if processor:
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_dino(folder: Path) -> Path:
    """A tiny random `Dinov2Model` (16 px, 4 px patches, 2 layers, width 16): DA's frozen feature net."""
    from transformers import Dinov2Config, Dinov2Model
    with seeded(4):
        model = Dinov2Model(Dinov2Config(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, mlp_ratio=2))
    model.save_pretrained(folder)
    return folder


def save_tiny_wan(root: Path) -> dict[str, str]:
    """All four folders under `root`; returns `ModelConfig` kwargs (preset + the four paths)."""
    root = Path(root)
    return {"preset": "tiny-wan",
            "transformer_path": str(save_transformer(root / "transformer")),
            "vae_path": str(save_vae(root / "vae")),
            "text_encoder_path": str(save_text_encoder(root / "text_encoder")),
            "image_encoder_path": str(save_image_encoder(root / "image_encoder"))}

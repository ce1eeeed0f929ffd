"""Tiny random CogVideoX parts saved as local folders, built from configs: nothing is downloaded (the tests'
CogVideoX models, and experiments/tiny-cogvideox's: `python -m workbench tiny-cogvideox --out models/tiny-cogvideox`).

Each `save_*` writes one `save_pretrained` folder that the real loaders in `workbench.models` read;
`save_tiny_cogvideox` writes all four and returns the `ModelConfig` keyword arguments of a CogVideoX-5B-I2V-like
diffusion network (v-prediction on CogVideoX-5B's own scheduler config) that point at them.
Sizes follow the "tiny-cogvideox" preset: 4 latent channels (in_channels 4 + 4), text width 32 over 16 tokens, and
the learned positional embedding's clip size: 32x32 px, 9 frames (4x4x3 latents).
"""
from __future__ import annotations

from pathlib import Path

import torch

from workbench.models.cogvideox import PRESETS
from workbench.models.tiny_wan import save_word_tokenizer, seeded

TINY = PRESETS["tiny-cogvideox"]
LATENT_CHANNELS = TINY["out_channels"]
SCALING_FACTOR = 0.7                  # CogVideoX-5B's VAE scaling factor
CLIP_SIZE, CLIP_FRAMES = 8 * TINY["sample_height"], TINY["sample_frames"]
# THUDM/CogVideoX-5b-I2V scheduler/scheduler_config.json: v-prediction, zero terminal SNR.
SCHEDULER_5B = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                    set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing")


def save_transformer(folder: Path) -> Path:
    """`CogVideoXTransformer3DModel` of the "tiny-cogvideox" preset (2 layers, width 32, RoPE + learned positions)."""
    from diffusers import CogVideoXTransformer3DModel
    with seeded(10):
        model = CogVideoXTransformer3DModel(**TINY)
    model.save_pretrained(folder)
    return folder


def save_vae(folder: Path) -> Path:
    """`AutoencoderKLCogVideoX` of diffusers' own tiny test config: space / 8, time 1 + 4k -> 1 + k.

    Its posterior's log-variance is set to -30 (std 3e-7): the stock pipeline samples the first frame's latent
    (`retrieve_latents`, sample mode) where the workbench takes the mode, so that the export test compares the rest.
    """
    from diffusers import AutoencoderKLCogVideoX
    with seeded(11):
        vae = AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 4,
                                     up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                     latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=2,
                                     temporal_compression_ratio=4, scaling_factor=SCALING_FACTOR)
    with torch.no_grad():   # encoder.conv_out gives (mean, logvar) on channels
        vae.encoder.conv_out.conv.weight[LATENT_CHANNELS:] = 0
        vae.encoder.conv_out.conv.bias[LATENT_CHANNELS:] = -30.0
    vae.save_pretrained(folder)
    return folder


def save_text_encoder(folder: Path) -> Path:
    """`T5EncoderModel` (d_model = the preset's text_embed_dim) and a word-level tokenizer built in code; like T5's it
    appends `</s>` and pads with `<pad>` (id 0)."""
    from transformers import T5Config, T5EncoderModel
    vocab = save_word_tokenizer(folder, TINY["max_text_seq_length"])
    with seeded(12):
        model = T5EncoderModel(T5Config(vocab_size=vocab, d_model=TINY["text_embed_dim"], d_kv=8, d_ff=64,
                                        num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1,
                                        decoder_start_token_id=0))
    model.save_pretrained(folder)
    return folder


def save_scheduler(folder: Path) -> Path:
    """CogVideoX-5B's `CogVideoXDDIMScheduler` config: the teacher's model.vp_schedule."""
    from diffusers import CogVideoXDDIMScheduler
    CogVideoXDDIMScheduler(**SCHEDULER_5B).save_pretrained(folder)
    return folder


def save_tiny_cogvideox(root: Path) -> dict[str, str]:
    """All four folders under `root`; returns `ModelConfig` kwargs of the v-prediction teacher on them."""
    root = Path(root)
    return {"preset": "tiny-cogvideox",
            "transformer_path": str(save_transformer(root / "transformer")),
            "vae_path": str(save_vae(root / "vae")),
            "text_encoder_path": str(save_text_encoder(root / "text_encoder")),
            "vp_schedule": str(save_scheduler(root / "scheduler")),
            "prediction": "v"}

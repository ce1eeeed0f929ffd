"""The Wan-scale path end to end with the real classes at tiny size: VAE, UMT5, CLIP, transformer.

Folders are written by `workbench/models/tiny_wan.py` with `save_pretrained` and read back by `build_backbone`
exactly as real local checkpoints would be; nothing is downloaded.
"""
import copy
import json
from pathlib import Path

import pytest
import torch

from workbench.models.tiny_wan import LATENTS_MEAN, LATENTS_STD, save_tiny_wan
from workbench.config import ModelConfig
from workbench.models import PRESETS, build_backbone
from workbench.models.text import WAN_TEXT_LEN
from workbench.sampling import euler, schedule

CAPTIONS = ["a red ball moving left", "a blue cat"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(ModelConfig kwargs, FlowNet in eval mode, Encoders) over tiny random folders."""
    paths = save_tiny_wan(tmp_path_factory.mktemp("tiny-wan"))
    net, encoders = build_backbone(ModelConfig(**paths))
    return paths, net.eval(), encoders


@pytest.fixture(scope="session")
def clip():
    """Pixels (B=2, 3, T=1+4k=5, 32, 32) in [-1, 1]."""
    return torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_tiny_folders_fit_the_preset(tiny):
    paths = tiny[0]
    tcfg = json.loads(Path(paths["transformer_path"], "config.json").read_text())
    vcfg = json.loads(Path(paths["vae_path"], "config.json").read_text())
    z = vcfg["z_dim"]
    assert vcfg["temperal_downsample"] == [False, True, True]                  # time / 4, as the real VAE
    assert tcfg["in_channels"] == z + 4 + z == 12 and tcfg["out_channels"] == z  # x_t + 4 mask + first frame
    assert tcfg["text_dim"] == json.loads(Path(paths["text_encoder_path"], "config.json").read_text())["d_model"]
    assert tcfg["image_dim"] == json.loads(Path(paths["image_encoder_path"], "config.json").read_text())["hidden_size"]


def test_whole_i2v_path(tiny, clip):
    _, net, cond = tiny
    x0, c = cond.prepare(clip, CAPTIONS)
    # VAE: z=4 channels, T' = 1 + (5-1)/4 = 2, space / 8; Wan's per-channel latent normalisation.
    assert x0.shape == (2, 4, 2, 4, 4)
    raw = cond.codec.vae.encode(clip).latent_dist.mode()
    mean, std = torch.tensor(LATENTS_MEAN).view(1, -1, 1, 1, 1), torch.tensor(LATENTS_STD).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(x0, (raw - mean) / std)
    # Fun-InP conditioning: 4 mask channels, 1 on latent frame 0 only; first-frame latents of the clip's shape.
    assert c.mask_BMTHW.shape == (2, 4, 2, 4, 4)
    assert c.mask_BMTHW[:, :, 0].eq(1).all() and c.mask_BMTHW[:, :, 1:].eq(0).all()
    assert c.first_BCTHW.shape == x0.shape
    torch.testing.assert_close(c.first_BCTHW[:, :, 0], x0[:, :, 0])           # frame 0 sees only the first frame
    # UMT5 text: exactly 512 tokens, non-zero over caption + </s>, zero beyond (as WanPipeline pads).
    assert c.text_BLD.shape == (2, WAN_TEXT_LEN, 32)
    for b, caption in enumerate(CAPTIONS):
        n = len(cond.text_encoder.tokenizer(caption).input_ids)
        assert n == len(caption.split()) + 1
        assert c.text_BLD[b, :n].abs().sum(-1).gt(0).all() and c.text_BLD[b, n:].eq(0).all()
    # CLIP image tokens: penultimate hidden states, 1 + (32/8)^2 tokens of width image_dim.
    assert c.image_BND.shape == (2, 17, 32)
    # Velocity field.
    v = net(x0, torch.tensor([0.3, 0.9]), c)
    assert v.shape == x0.shape and torch.isfinite(v).all()
    # 2 Euler steps with guidance 2: the batched guidance equals v_u + 2 (v_c - v_u) done by hand.
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    null = cond.null_text(2)
    assert null.shape == (2, WAN_TEXT_LEN, 32) and null[:, 1:].eq(0).all()   # "" -> just </s>
    out = euler(net, noise, c, schedule(2), guidance=2.0, null_text=null)
    x = noise
    with torch.no_grad():
        for t, t_next in [(1.0, 0.5), (0.5, 0.0)]:
            t_B = torch.full((2,), t)
            v_c, v_u = net(x, t_B, c), net(x, t_B, c.with_text(null))
            x = x + (t_next - t) * (v_u + 2.0 * (v_c - v_u))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-4)
    # VAE decode: back to 1 + 4 (T'-1) = 5 frames of 32 x 32 in [-1, 1].
    pixels = cond.decode(out)
    assert pixels.shape == (2, 3, 5, 32, 32) and torch.isfinite(pixels).all() and pixels.abs().max() <= 1


def test_caption_and_image_tokens_both_matter(tiny, clip):
    _, net, cond = tiny
    video = clip[:1]
    x0, c1 = cond.prepare(video, ["a red ball"])
    _, c2 = cond.prepare(video, ["a blue cat moving right"])
    t = torch.tensor([0.5])
    with torch.no_grad():
        v1, v2 = net(x0, t, c1), net(x0, t, c2)
        c3 = c1.with_text(c1.text_BLD)
        c3.image_BND = torch.zeros_like(c1.image_BND)
        v3 = net(x0, t, c3)
    assert torch.isfinite(v1).all() and torch.isfinite(v2).all()
    assert not torch.allclose(v1, v2)       # the caption reaches the velocity
    assert not torch.allclose(v1, v3)       # so do the CLIP image tokens


def test_512_text_tokens_keep_image_tokens_out_of_text_attention(tiny, clip):
    """Wan's attention splits context at len - 512: image tokens must reach only the added k/v branch."""
    _, net, cond = tiny
    x0, c = cond.prepare(clip[:1], ["a red ball"])
    other_image = torch.randn(c.image_BND.shape, generator=torch.Generator().manual_seed(2))
    silenced = copy.deepcopy(net)            # image branch outputs zero: v no longer depends on image tokens ...
    for block in silenced.transformer.blocks:
        torch.nn.init.zeros_(block.attn2.add_v_proj.weight)
        torch.nn.init.zeros_(block.attn2.add_v_proj.bias)
    t = torch.tensor([0.5])
    other = c.with_text(c.text_BLD)
    other.image_BND = other_image
    n = len(cond.text_encoder.tokenizer("a red ball").input_ids)
    short = c.with_text(c.text_BLD[:, :n])   # the caption's tokens only, unpadded
    with torch.no_grad():
        v = silenced(x0, t, c)
        torch.testing.assert_close(v, silenced(x0, t, other))         # ... when text has 512 tokens
        torch.testing.assert_close(v, silenced(x0, t, short))         # FlowNet pads short text itself
        inp = torch.cat([x0, c.mask_BMTHW, c.first_BCTHW], dim=1)     # the bare transformer does not:
        raw = [silenced.transformer(inp, 1000 * t, short.text_BLD, encoder_hidden_states_image=img,
                                    return_dict=False)[0] for img in (c.image_BND, other_image)]
    assert not torch.allclose(raw[0], raw[1])  # unpadded, image tokens leak into the text attention


@pytest.mark.parametrize("key", ["transformer_path", "vae_path", "text_encoder_path", "image_encoder_path"])
def test_missing_folder_names_key_and_path(tiny, tmp_path, key):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match=f"model.{key}: {missing}"):
        build_backbone(ModelConfig(**{**tiny[0], key: str(missing)}))


def test_parts_that_do_not_fit_fail_at_build(tiny):
    paths = tiny[0]
    with pytest.raises(ValueError, match="model.preset=toy .*model.vae_path"):  # 7-channel toy vs 4-ch latents
        build_backbone(ModelConfig(**{**paths, "transformer_path": "", "preset": "toy"}))
    with pytest.raises(ValueError, match="image_dim=32.*model.image_encoder_path"):
        build_backbone(ModelConfig(**{**paths, "image_encoder_path": ""}))


def test_real_preset_is_the_1_3b_architecture():
    from diffusers import WanTransformer3DModel
    with torch.device("meta"):              # shapes only: nothing is allocated
        m = WanTransformer3DModel(**PRESETS["wan2.1-fun-1.3b-inp"])
    assert all(p.is_meta for p in m.parameters())
    cfg = m.config
    assert (cfg.in_channels, cfg.out_channels, cfg.num_layers) == (36, 16, 30)   # 16 + 4 mask + 16
    assert (cfg.num_attention_heads, cfg.attention_head_dim, cfg.ffn_dim) == (12, 128, 8960)
    assert (cfg.text_dim, cfg.image_dim, cfg.added_kv_proj_dim) == (4096, 1280, 1536)  # UMT5-XXL, CLIP ViT-H
    n = sum(p.numel() for p in m.parameters())
    assert 1.5e9 < n < 1.6e9, n             # 1.56 B: the 1.3B T2V backbone + the I2V image branch

"""`wan-convert` (issue 35): a Wan2.1 transformer in the original layout becomes the diffusers folder the Wan configs
name, through diffusers' own renames, and anything that is not the preset's transformer is refused, writing nothing."""
import subprocess
import sys

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from workbench.models.wan import PRESETS

# diffusers -> original names (the Wan repo's wan/modules/model.py), in an order where no rename undoes another
TO_ORIGINAL = [("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
               ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
               ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
               ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
               ("condition_embedder.time_proj", "time_projection.1"),
               ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
               ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
               ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
               ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
               ("attn1", "self_attn"), ("attn2", "cross_attn"), (".to_out.0.", ".o."), (".to_q.", ".q."),
               (".to_k.", ".k."), (".to_v.", ".v."), (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."),
               (".norm_added_k.", ".norm_k_img."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
               ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3")]


def original_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    if key.startswith("proj_out."):
        return key.replace("proj_out", "head.head")
    for a, b in TO_ORIGINAL:
        key = key.replace(a, b)
    return key.replace("scale_shift_table", "modulation")


@pytest.fixture
def original(tmp_path):
    torch.manual_seed(0)
    model = WanTransformer3DModel(**PRESETS["tiny-wan"]).eval()
    state = {original_key(k): v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.startswith("blocks.0.self_attn.q.") for k in state) and "head.modulation" in state
    save_file(state, str(tmp_path / "original.safetensors"))
    return model, tmp_path / "original.safetensors"


def test_an_original_checkpoint_becomes_the_same_diffusers_transformer(original, tmp_path):
    model, checkpoint = original
    r = subprocess.run([sys.executable, "-m", "workbench", "wan-convert", str(checkpoint), "--preset", "tiny-wan",
                        "--out", str(tmp_path / "transformer")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    converted = WanTransformer3DModel.from_pretrained(tmp_path / "transformer", local_files_only=True).eval()
    ours, theirs = model.state_dict(), converted.state_dict()
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    x, t = torch.randn(1, 4, 2, 4, 4), torch.tensor([500.0])
    text, image = torch.randn(1, 6, 32), torch.randn(1, 5, 32)
    cond = torch.randn(1, 8, 2, 4, 4)
    with torch.no_grad():
        a, b = (m(torch.cat([x, cond], 1), t, text, encoder_hidden_states_image=image).sample for m in (model, converted))
    assert a.equal(b)


def test_another_architecture_is_refused_writing_nothing(original, tmp_path):
    _, checkpoint = original
    r = subprocess.run([sys.executable, "-m", "workbench", "wan-convert", str(checkpoint), "--out",
                        str(tmp_path / "transformer")], capture_output=True, text=True)   # the 1.3B preset
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "lacks blocks.10." in r.stderr and "not a wan2.1-fun-1.3b-inp transformer" in r.stderr  # 2 blocks, not 30
    assert not (tmp_path / "transformer").exists()


def test_a_missing_key_is_named(original, tmp_path):
    from safetensors.torch import load_file
    _, checkpoint = original
    state = load_file(str(checkpoint))
    del state["blocks.1.cross_attn.k_img.weight"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    r = subprocess.run([sys.executable, "-m", "workbench", "wan-convert", str(tmp_path / "cut.safetensors"),
                        "--preset", "tiny-wan", "--out", str(tmp_path / "transformer")], capture_output=True, text=True)
    assert r.returncode == 2 and "lacks blocks.1.attn2.add_k_proj.weight" in r.stderr, r.stderr
    assert not (tmp_path / "transformer").exists()

"""The adversarial stage's frozen per-frame feature net (a tiny transformers Dinov2Model at toy scale)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from workbench import shipped
from workbench.models.dino import (IMAGENET_MEAN, IMAGENET_STD, TOY_FOLDER, frame_tokens, load_feature_net,
                                       preprocess, toy_dino_config, train_toy_dino)


def test_toy_net_is_frozen_and_small():
    net = load_feature_net("toy")
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    assert net.config.image_size == toy_dino_config().image_size == 24
    assert sum(f.stat().st_size for f in shipped(TOY_FOLDER).iterdir()) < 2 ** 20


def test_frame_tokens_shapes_and_gradients():
    net = load_feature_net("toy")
    frames_N3HW = (torch.rand(5, 3, 24, 24) * 2 - 1).requires_grad_(True)
    tokens = frame_tokens(net, frames_N3HW, (2, 4))
    assert [t.shape for t in tokens] == [(5, 1 + 36, 64)] * 2
    sum(t.square().mean() for t in tokens).backward()
    assert frames_N3HW.grad is not None and frames_N3HW.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_missing_folder_names_path(tmp_path):
    missing = tmp_path / "no-dino"
    with pytest.raises(FileNotFoundError, match="Dinov2Model folder") as e:
        load_feature_net(missing)
    assert str(missing) in str(e.value)


def test_tiny_training_round_trips(tmp_path):
    out = train_toy_dino(tmp_path / "dino", steps=3, batch_size=4)
    info = json.loads((out / "info.json").read_text())
    assert {"command", "steps", "train_seeds", "val_seeds", "acc_shape", "acc_colour", "mask_iou"} <= set(info)
    net = load_feature_net(out)
    net.save_pretrained(tmp_path / "again", safe_serialization=True)  # a reload that dropped a weight would differ
    saved, again = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert saved.keys() == again.keys()
    assert all(torch.equal(saved[k], again[k]) for k in saved)


def test_preprocess_resizes_only_when_needed():
    frames_N3HW = torch.rand(2, 3, 24, 24) * 2 - 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(preprocess(frames_N3HW, 24), ((frames_N3HW + 1) / 2 - mean) / std)
    assert preprocess(torch.zeros(2, 3, 48, 40), 24).shape == (2, 3, 24, 24)


def test_the_one_fitting_loop_follows_its_schedule_and_minimises():
    """workbench/models/fit.py, the loop the three toy feature nets share: warmup over steps // 20, cosine to 0."""
    from workbench.models.fit import fit, warmup_cosine
    assert warmup_cosine(0, 100) == pytest.approx(0.2) and warmup_cosine(4, 100) == pytest.approx(0.99606, abs=1e-5)
    assert warmup_cosine(100, 100) == 0.0
    p = torch.nn.Parameter(torch.zeros(()))
    losses = fit([p], lambda step: ((p - 3) ** 2, {}), steps=200, lr=0.1, weight_decay=0.0, desc="t", shown={"loss": ".3f"})
    assert len(losses) == 200 and losses[-1] < 1e-2 * losses[0]

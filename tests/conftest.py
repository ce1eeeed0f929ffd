import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def dino(tmp_path_factory):
    """A tiny random `Dinov2Model` folder (16 px, 4 px patches, 2 layers): the adversarial methods' feature net."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    folder = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                             num_attention_heads=2, mlp_ratio=2)).save_pretrained(folder)
    return str(folder)

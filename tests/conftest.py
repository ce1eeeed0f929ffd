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


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of `size` (e.g. "256k"): a disk that fills up. Root only (CI is root);
    skipped where mounting is not allowed. Unmounted after the test."""
    import subprocess
    mounted = []

    def mount(size: str) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                          capture_output=True).returncode:
            pytest.skip("this machine does not let the tests mount a tmpfs")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], check=True)

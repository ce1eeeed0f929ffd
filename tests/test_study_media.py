"""A study's video files: one byte size for every video (an attention check's noisy copies must not stand out by
size) and byte-stable encoding (the same models and seed rebuild the same files)."""
import hashlib

import numpy as np
import pytest

from workbench.data.io import read_frames, write_mp4
from workbench.study.build import build_study, pad_mp4, padded_size


def _clip(seed: int) -> np.ndarray:
    """Moving noise, the kind of content x264's rate control works hardest on (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    noise = rng.normal(0, 40, (8, 24, 24, 3))
    return np.clip(np.stack([np.roll(base, t, axis=0) for t in range(8)]) + noise, 0, 255).astype(np.uint8)


def test_a_padded_mp4_decodes_to_the_same_frames(tmp_path):
    f = write_mp4(tmp_path / "a.mp4", _clip(0), scale=8)
    data = f.read_bytes()
    size = padded_size([len(data), 1000])
    assert size % 4096 == 0 and size >= len(data) + 8
    padded = tmp_path / "b.mp4"
    padded.write_bytes(pad_mp4(data, size))
    assert padded.stat().st_size == size
    assert np.array_equal(read_frames(padded), read_frames(f))
    with pytest.raises(ValueError, match="free box needs 8 bytes"):
        pad_mp4(data, len(data) + 7)


def test_the_encoder_gives_the_same_bytes_every_time(tmp_path):
    """Multi-threaded, or with x264's macroblock tree, some of these came out 2-4 ways in 8 runs."""
    for seed in range(4):
        digests = {hashlib.sha256(write_mp4(tmp_path / f"{seed}-{k}.mp4", _clip(seed), scale=8).read_bytes())
                   .hexdigest() for k in range(4)}
        assert len(digests) == 1, seed


def test_a_study_has_one_video_size_and_rebuilds_byte_identical(tmp_path):
    def build(out):
        build_study(["teacher@2", "ccd@1"], items=2, seed=0, out=out, attention_checks=0.5, device="cpu")
        return {f.name: f.read_bytes() for f in (out / "videos").glob("*.mp4")}

    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert first == second                                                # the same names, the same bytes
    assert len({len(b) for b in first.values()}) == 1                      # attention checks included
    import json
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    attention = [it for it in manifest["items"] if it["attention"]]
    assert attention and all(it["attention"]["answer"] in first for it in attention)
    assert {v["video"] for it in manifest["items"] for v in it["videos"]} == set(first)

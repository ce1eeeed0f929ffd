"""The encoder cache (issue 35): `data cache` writes the frozen encoders' outputs once; training with data.cache reads
them, builds no text / image encoder and no VAE encoder, and ends bitwise as training without it (CPU)."""
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from workbench import models
from workbench.__main__ import main
from workbench.config import ConfigError
from workbench.data import build_dataset
from workbench.data.cache import INDEX, CacheIndex, digest, write_cache
from workbench.methods import load_config
from workbench.models import build_backbone
from workbench.train import train

MICRO = "experiments/micro/teacher.yaml"
SMALL = ["data.train_size=10", "train.steps=3", "train.ckpt_every=3", "train.log_every=1"]
WAN = ["data.toy.size=32", "data.toy.frames=5", "data.test_size=2"]  # the clips of the tiny-Wan runs


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    from workbench.models.tiny_wan import save_tiny_wan
    return [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path_factory.mktemp("tiny-wan")).items()]


def refused(*args, **kwargs):
    raise AssertionError("an encoder was built")


def make_cache(cfg, out: Path) -> Path:
    return write_cache(cfg, build_backbone(cfg.model)[1], out, progress=False)


def run_bytes(run: Path) -> dict[str, bytes]:
    """Every file of the run's last checkpoint and its sample sheets, by relative path."""
    ckpt = max((run / "checkpoints").glob("step-*"))
    files = [*ckpt.glob("*.safetensors"), *(run / "samples").glob("*.png")]
    return {str(f.relative_to(run)): f.read_bytes() for f in files}


def assert_trains_as_live(config: str, overrides: list[str], tmp_path: Path) -> None:
    cfg = load_config(config, overrides)
    cache = make_cache(cfg, tmp_path / "cache")
    live = run_bytes(train(cfg, tmp_path / "live", progress=False))
    with pytest.MonkeyPatch.context() as mp:          # the cached run builds no text or image encoder
        for name in ("ToyTextEncoder", "UMT5TextEncoder", "CLIPImageEncoder"):
            mp.setattr(models, name, refused)
        cached = run_bytes(train(load_config(config, [*overrides, f"data.cache={cache}"]), tmp_path / "cached",
                                 progress=False))
    assert live.keys() == cached.keys() and any(k.endswith("model.safetensors") for k in live)
    assert [k for k in live if live[k] != cached[k]] == []


def test_cache_holds_every_clip_and_a_manifest(tmp_path):
    cfg = load_config(MICRO, SMALL)
    out = make_cache(cfg, tmp_path / "cache")
    index = json.loads((out / INDEX).read_text())
    assert index["settings"]["model.preset"] == "toy" and index["settings"]["data.toy.frames"] == 4
    assert index["settings"]["data.train_size"] == 10 and index["settings"]["data.kind"] == "toy"
    assert [index["splits"][s]["clips"] for s in ("train", "test")] == [10, 8]
    with safe_open(str(out / "train-00000.safetensors"), "pt") as f:
        assert {"video", "x0", "first", "mask", "text", "digest", "first_digest"} == set(f.keys())
        assert f.get_slice("x0").get_shape() == [10, 3, 4, 16, 16]
    with safe_open(str(out / "test-00000.safetensors"), "pt") as f:
        assert "video" not in f.keys()  # noqa: SIM118
    cached = build_dataset(load_config(MICRO, [*SMALL, f"data.cache={out}"]).data, "train")
    source = build_dataset(cfg.data, "train")
    assert len(cached) == 10
    assert cached[3]["video"].equal(source[3]["video"]) and cached[3]["caption"] == source[3]["caption"]
    assert not list(tmp_path.glob(".wb-*"))          # written under a temporary name, renamed when complete


@pytest.mark.parametrize("config", [MICRO, "experiments/micro/da.yaml"])
def test_training_from_the_cache_is_bitwise_training_without_it(config, tmp_path):
    """flow matching (caption dropout: the empty caption served from the cache) and CCD + DA (decode, real clips)."""
    assert_trains_as_live(config, [*SMALL, "flow_matching.caption_dropout=0.5"] if config == MICRO else SMALL,
                          tmp_path)


def test_tiny_wan_trains_from_the_cache_bitwise(wan_model, tmp_path):
    assert_trains_as_live(MICRO, [*SMALL, *WAN, *wan_model, "train.sample_steps=[1]", "train.sample_num=1",
                                  "model.prediction=velocity"], tmp_path)


def test_ta_trains_from_the_cache_bitwise(tmp_path):
    """Flow-DPO conditions on its pairs' first frames: found in the cache by the frame's digest."""
    from workbench.preferences import build_preferences
    teacher = train(load_config(MICRO, [*SMALL, "train.steps=2", "train.ckpt_every=2"]), tmp_path / "teacher",
                    progress=False)
    pairs = build_preferences(teacher, tmp_path / "pairs", 4, 2, 1, batch_size=2, progress=False)
    assert_trains_as_live("experiments/micro/dpo.yaml", [*SMALL, f"data.preferences={pairs}"], tmp_path)


@pytest.mark.parametrize("config, pixels", [(MICRO, "float32"), ("experiments/micro/da.yaml", "uint8")])
def test_an_openvid_csv_trains_from_the_cache_bitwise(config, pixels, tmp_path):
    """mp4 frames at their own size (24 px) are on the 1/127.5 grid: a uint8 cache serves DA's real clips exactly."""
    from workbench.data.export import export_toy
    csv = export_toy(tmp_path / "clips", num=5, seed=10)
    assert_trains_as_live(config, [*SMALL, "data.kind=videos", f"data.videos.csv={csv}", "data.videos.frames=4",
                                   "data.videos.height=24", "data.videos.width=24", "data.test_size=1",
                                   "train.batch_size=2", "train.sample_num=1", f"data.cache_pixels={pixels}"],
                          tmp_path)


def test_a_uint8_cache_is_a_quarter_and_serves_the_live_encodings(tmp_path):
    """Toy pixels are off the grid: rounded by at most half a step, while x0 and the conditioning stay the live
    encoder's (found by the rounded clip's digest), and DA trains from it."""
    sizes = {}
    for pixels in ("float32", "uint8"):
        cfg = load_config("experiments/micro/da.yaml", [*SMALL, f"data.cache_pixels={pixels}"])
        out = make_cache(cfg, tmp_path / pixels)
        with safe_open(str(out / "train-00000.safetensors"), "pt") as f:
            sizes[pixels] = f.get_slice("video").get_shape(), f.get_slice("video").get_dtype()
    assert sizes == {"float32": ([10, 3, 4, 16, 16], "F32"), "uint8": ([10, 3, 4, 16, 16], "U8")}
    live, cached = build_dataset(cfg.data, "train"), build_dataset(load_config(
        "experiments/micro/da.yaml", [*SMALL, "data.cache_pixels=uint8", f"data.cache={out}"]).data, "train")
    assert (cached[2]["video"] - live[2]["video"]).abs().max() <= 0.5 / 127.5 + 1e-6
    rows, _ = CacheIndex(out, cfg.model).rows([digest(cached[2]["video"])])
    x0_live, _ = build_backbone(cfg.model)[1].prepare(live[2]["video"][None], [live[2]["caption"]])
    assert rows["x0"].equal(x0_live)
    run = train(load_config("experiments/micro/da.yaml", [*SMALL, "data.cache_pixels=uint8", f"data.cache={out}"]),
                tmp_path / "run", progress=False)
    assert (run / "checkpoints").is_dir()


def test_the_cache_builds_no_text_image_or_vae_encoder(wan_model, tmp_path, monkeypatch):
    cfg = load_config(MICRO, [*SMALL, *WAN, *wan_model])
    cache = make_cache(cfg, tmp_path / "cache")

    monkeypatch.setattr(models, "UMT5TextEncoder", refused)
    monkeypatch.setattr(models, "CLIPImageEncoder", refused)
    _, encoders = build_backbone(cfg.model, cache=str(cache))
    assert encoders.text_encoder is None and encoders.image_encoder is None
    assert encoders.codec.vae.encoder is None and encoders.codec.vae.decoder is not None  # kept: DA, sheets


@pytest.mark.parametrize("key, value", [("data.toy.frames", 5), ("data.train_size", 12), ("model.dtype", "bfloat16"),
                                        ("model.preset", "toy-no-positions"),
                                        ("data.cache_pixels", "uint8")])
def test_a_cache_made_with_other_settings_is_refused_naming_the_key(key, value, tmp_path):
    cfg = load_config(MICRO, SMALL)
    cache = make_cache(cfg, tmp_path / "cache")
    other = load_config(MICRO, [*SMALL, f"{key}={value}", f"data.cache={cache}"])
    with pytest.raises(ConfigError, match=rf"{key}=.*but this config has {key}={value!r}"):
        build_dataset(other.data, "train")
        build_backbone(other.model, cache=other.data.cache)


def test_the_cli_writes_and_replaces_only_with_force(tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["data", "cache", MICRO, "--out", str(out), "--set", "data.train_size=4", "--set", "data.test_size=2"]
    assert main(args) == 0 and (out / INDEX).is_file()
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    (out / "note.txt").write_text("mine")
    assert main([*args, "--force", "--set", "data.train_size=6"]) == 0
    assert json.loads((out / INDEX).read_text())["splits"]["train"]["clips"] == 6
    assert (out / "note.txt").read_text() == "mine"                        # files a user added are kept
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a cache")
    assert main([*args[:3], "--out", str(tmp_path / "other"), "--force"]) == 2
    assert "did not write" in capsys.readouterr().err


def test_a_missing_cache_names_the_command(tmp_path):
    cfg = load_config(MICRO, [*SMALL, f"data.cache={tmp_path / 'nothing'}"])
    with pytest.raises(FileNotFoundError, match="data cache CONFIG"):
        build_dataset(cfg.data, "train")


def test_a_cache_beyond_the_disk_is_refused_after_one_shard(tmp_path, monkeypatch):
    import shutil

    from workbench.data import cache
    cfg = load_config(MICRO, SMALL)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ValueError, match="train split's 10 clips need about .* MiB free"):
        write_cache(cfg, build_backbone(cfg.model)[1], tmp_path / "cache", shard_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []

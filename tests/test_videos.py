"""Toy export -> OpenVid-1M CSV -> the real-data loader, and its handling of bad files."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from workbench.config import VideoFolderSpec
from workbench.data.export import export_toy
from workbench.data.io import VideoReadError, read_frames
from workbench.data.synthetic import ToySpec, render_clip, to_tensor
from workbench.data.videos import VideoCSVDataset


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return export_toy(out, num=4, seed=10, spec=ToySpec())


def test_export_reads_back_through_the_loader(exported):
    ds = VideoCSVDataset(VideoFolderSpec(csv=str(exported), frames=8, height=24, width=24), split="train")
    assert len(ds) == 4
    cols = pd.read_csv(exported).columns.tolist()
    assert cols[:2] == ["video", "caption"] and "motion score" in cols
    for i in range(4):
        item = ds[i]
        video, caption, _ = render_clip(10 + i)
        assert item["caption"] == caption and item["video"].shape == (3, 8, 24, 24)
        err = (item["video"] - to_tensor(video)).abs().mean().item() * 127.5
        assert err < 6, f"mean decode error {err:.2f} of 255"  # H.264 yuv420p: chroma is subsampled
    assert not ds.skipped


def test_stride_and_resize(exported):
    ds = VideoCSVDataset(VideoFolderSpec(csv=str(exported), frames=3, stride=2, height=16, width=12))
    assert ds[0]["video"].shape == (3, 3, 16, 12)


def test_bad_clips_are_skipped_and_counted(exported, tmp_path):
    table = pd.read_csv(exported)
    (tmp_path / "videos").mkdir()
    for name in table["video"]:
        (tmp_path / "videos" / name).write_bytes((exported.parent / "videos" / name).read_bytes())
    (tmp_path / "videos" / "corrupt.mp4").write_bytes(b"\x00not an mp4" * 64)
    bad = pd.DataFrame([{"video": "corrupt.mp4", "caption": "x"}, {"video": "missing.mp4", "caption": "y"}])
    pd.concat([bad, table]).to_csv(tmp_path / "c.csv", index=False)
    ds = VideoCSVDataset(VideoFolderSpec(csv=str(tmp_path / "c.csv"), frames=8, height=24, width=24))
    first = ds[0]  # the corrupt and missing clips are skipped: the next readable one comes back
    assert first["path"] == table["video"][0] and ds.skipped["unreadable"] == 2
    with pytest.raises(ValueError, match=r"none of the 6 train clips can be read \(2 unreadable, 4 too short"):
        VideoCSVDataset(VideoFolderSpec(csv=str(tmp_path / "c.csv"), frames=50, height=24, width=24))


def test_missing_and_empty_csv_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        VideoCSVDataset(VideoFolderSpec(csv=str(tmp_path / "nope.csv")))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: empty"):
        VideoCSVDataset(VideoFolderSpec(csv=str(tmp_path / "empty.csv")))
    (tmp_path / "header.csv").write_text("video,caption\n")
    with pytest.raises(ValueError, match="header.csv: no clips"):
        VideoCSVDataset(VideoFolderSpec(csv=str(tmp_path / "header.csv")))
    (tmp_path / "cols.csv").write_text("path,text\na.mp4,b\n")
    with pytest.raises(ValueError, match="no column 'video'"):
        VideoCSVDataset(VideoFolderSpec(csv=str(tmp_path / "cols.csv")))


def test_corrupt_file_names_itself(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(VideoReadError, match="bad.mp4"):
        read_frames(bad)


def test_cli_export(tmp_path, root):
    r = subprocess.run([sys.executable, "-m", "workbench", "data", "export", "--out", str(tmp_path), "--num", "2",
                        "--seed", "5"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]
    assert len(pd.read_csv(tmp_path / "OpenVid-1M.csv")) == 2 and (tmp_path / "truth.jsonl").is_file()
    assert np.array_equal(read_frames(tmp_path / "videos" / "toy-0000000005.mp4").shape, (8, 24, 24, 3))


def test_training_reads_an_openvid_csv(exported, tmp_path):
    from workbench.methods import load_config
    from workbench.train import train
    cfg = load_config("experiments/micro/teacher.yaml", [
        "data.kind=videos", f"data.videos.csv={exported}", "data.videos.frames=4", "data.videos.height=16",
        "data.videos.width=16", "data.test_size=1", "train.steps=2", "train.batch_size=2", "train.sample_num=1"])
    run = train(cfg, tmp_path / "run", progress=False)
    assert (run / "checkpoints" / "step-000002").is_dir() and (run / "samples" / "step-000002.png").is_file()

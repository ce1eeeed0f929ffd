from dataclasses import asdict

import numpy as np
import pytest
from scipy import ndimage

from workbench.config import DataConfig, VideoFolderSpec
from workbench.data import build_dataset
from workbench.data.export import export_toy
from workbench.data.synthetic import (COLOURS, SPLIT_SEEDS, TEST_SEED_OFFSET, ToySpec, ToyVideoDataset, render_clip,
                                      shape_mask, split_seed)
from workbench.data.videos import VideoCSVDataset
from workbench.eval.oracle import clip_metrics, oracle_metrics


def test_clips_are_deterministic_and_splits_disjoint():
    a, b = render_clip(7), render_clip(7)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(render_clip(8)[0], a[0])
    train, test = ToyVideoDataset("train", 10), ToyVideoDataset("test", 10)
    assert {train[i]["seed"] for i in range(10)}.isdisjoint({test[i]["seed"] for i in range(10)})
    item = train[3]
    assert item["video"].shape == (3, 8, 24, 24) and item["video"].min() >= -1 and item["video"].max() <= 1


def test_the_validation_split_has_its_own_seeds_and_the_test_split_keeps_its_own():
    """Seed ranges: train 0.., test 1e9.. (the shipped tables' clips), validation 1.5e9..; no split may hold more
    seeds than the gap to the next range, so no train_size reaches another split."""
    assert split_seed("test", 5) == TEST_SEED_OFFSET + 5 == 1_000_000_005
    val = build_dataset(DataConfig(validation_size=4), "validation")
    assert [val[i]["seed"] for i in range(4)] == [1_500_000_000 + i for i in range(4)]
    ranges = sorted((split_seed(s, 0), split_seed(s, SPLIT_SEEDS - 1)) for s in ("train", "validation", "test"))
    assert all(hi < next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:])) and ranges[-1][1] < 2_000_000_000
    with pytest.raises(ValueError, match="data.train_size: 500000001"):
        build_dataset(DataConfig(train_size=SPLIT_SEEDS + 1), "train")
    with pytest.raises(ValueError, match=r"data.validation_size: 0, so there is no validation split"):
        build_dataset(DataConfig(), "validation")


def test_a_csv_splits_into_train_validation_and_test_rows(tmp_path):
    """The last test_size rows are the test split (as before), the validation_size rows before them the validation
    split, the rest train; a validation split that leaves no train rows is refused."""
    spec = VideoFolderSpec(csv=str(export_toy(tmp_path / "clips", num=6, seed=0)), frames=8, height=24, width=24)
    paths = lambda split, **sizes: VideoCSVDataset(spec, split, **sizes).paths  # noqa: E731
    every = paths("train")                                                       # no more rows than test_size 0 ...
    assert paths("test", test_size=2) == every[4:] and paths("train", test_size=2) == every[:4]
    assert paths("validation", test_size=2, validation_size=2) == every[2:4]
    assert paths("train", test_size=2, validation_size=2) == every[:2]
    assert paths("test", test_size=2, validation_size=2) == every[4:]
    with pytest.raises(ValueError, match="data.validation_size: 4 validation and 2 test rows leave no train rows"):
        VideoCSVDataset(spec, "validation", test_size=2, validation_size=4)


def test_ground_truth_matches_pixels():
    spec = ToySpec()
    for seed in range(30):
        video, caption, truth = render_clip(seed, spec)
        for o in truth:
            assert o.colour in caption and o.shape in caption
            assert (o.direction in caption) == o.direction_stated
            m = shape_mask(o.shape, o.size)
            for f, (x, y) in enumerate(o.xy):
                assert 0 <= x <= spec.size - o.size and 0 <= y <= spec.size - o.size
                assert (video[f, y:y + o.size, x:x + o.size][m] == o.rgb).all()
            steps = np.abs(np.diff(np.array(o.xy), axis=0)).max(axis=1)
            assert (steps <= o.speed).all()  # moves at its speed, or less on a bounce


def test_continuation_is_multimodal():
    """Clips whose caption omits the direction use all four directions about equally often."""
    dirs = [o.direction for s in range(800) for o in render_clip(s)[2] if not o.direction_stated]
    counts = np.array([dirs.count(d) for d in ("left", "right", "up", "down")])
    assert counts.min() > 0.15 * len(dirs)
    stated = sum(o.direction_stated for s in range(800) for o in render_clip(s)[2])
    assert 0.4 < stated / 800 < 0.6


def test_objects_stand_out_from_backgrounds():
    for seed in range(50):
        video, _, truth = render_clip(seed)
        for o in truth:
            m = shape_mask(o.shape, o.size)
            x, y = o.xy[0]
            bg = np.ones(video.shape[1:3], bool)
            bg[y:y + o.size, x:x + o.size] &= ~m
            assert (np.abs(video[0][bg].astype(int) - o.rgb) > 60).any(-1).all()
    assert len(COLOURS) >= 4


def test_oracle_perfect_on_real_and_worse_on_blur():
    clips = [render_clip(s) for s in range(20)]
    reals = [c[0] for c in clips]
    truths = [[asdict(o) for o in c[2]] for c in clips]
    real = oracle_metrics(reals, reals, truths)
    assert real["solid"] == 1 and real["shape_iou"] == 1 and real["colour_mass"] == 1
    assert real["path_accel"] < 1e-9 and real["direction_agree"] == 1 and real["first_frame_mae"] == 0
    blurred = [ndimage.uniform_filter(v.astype(float), size=(1, 3, 3, 1)).round().astype(np.uint8) for v in reals]
    blur = oracle_metrics(blurred, reals, truths)
    assert blur["sharpness"] < 0.5 * real["sharpness"] and blur["solid"] < real["solid"]
    assert blur["colour_mass"] < real["colour_mass"]


def test_oracle_sees_a_doubled_object():
    video, _, truth = render_clip(3)
    o = truth[0]
    doubled = video.copy()
    m = shape_mask(o.shape, o.size)
    doubled[1:, :o.size, :o.size][:, m] = o.rgb  # a second copy in the corner from frame 1 on
    x, y = o.xy[1]
    if x < o.size + 1 and y < o.size + 1:
        return  # the copy would touch the object itself
    metrics = clip_metrics(doubled, video, [asdict(t) for t in truth])
    assert metrics["count_ok"] < 1 and metrics["solid"] < 1


def test_oracle_direction_is_the_first_move_even_when_the_object_bounces_at_once():
    # An object that hits the wall at frame 1 is back at its start at frame 2 (e.g. y 12 -> 16 -> 12 -> 8):
    # its direction must come from the first move, so a clip that starts the other way (frame 1 := frame 3,
    # the mirror position) disagrees.
    seed = next(s for s in range(1000) if (o := render_clip(s)[2][0]).direction_stated and o.xy[2] == o.xy[0])
    video, _, truth = render_clip(seed)
    truth = [asdict(t) for t in truth]
    assert clip_metrics(video, video, truth)["direction_agree"] == 1
    wrong_way = video.copy()
    wrong_way[1] = video[3]
    assert clip_metrics(wrong_way, video, truth)["direction_agree"] == 0

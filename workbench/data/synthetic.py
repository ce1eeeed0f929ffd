"""The embedded `toy` benchmark: procedural image-to-video clips of moving shapes.

Each clip is a pure function of its integer seed: a textured two-colour background and one or more
solid shapes with crisp edges that move in a straight line at an integer speed and bounce off the
walls. The caption names each object's colour and shape, and states its direction (and its speed,
where there are several) only some of the time, so the continuation of a first frame is multimodal
(4 directions): exactly what few-step samplers average into faded, blurred or doubled objects.
By default objects sit on a 4 px grid and move one grid cell per frame, so that the toy backbone's
4x4 patches see whole object cells: a 2-core CPU then learns solid, coherently moving objects in
minutes (with free sub-patch positions it did not; experiments/toy/RESULTS.md, "Why the grid").
Every clip carries its ground truth (shape, colour, size, speed, direction, position per frame).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from workbench.config import ToySpec

SHAPES = ("square", "circle", "triangle")
COLOURS = {  # bright, mutually distinct; backgrounds are drawn dark and desaturated
    "red": (235, 45, 45), "green": (60, 220, 70), "blue": (60, 110, 255),
    "yellow": (245, 225, 50), "magenta": (230, 60, 230), "cyan": (60, 225, 235),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEED_WORDS = ("slowly", "quickly")  # slowest and fastest of ToySpec.speeds
# Each split is its own seed range, SPLIT_SEEDS long: train 0.., test 1e9.., validation 1.5e9.. They never meet
# each other or the feature nets' ranges (2e9.., 3e9..: workbench/eval/feature_nets.py, workbench/models/dino.py).
SPLIT_SEED_OFFSETS = {"train": 0, "test": 1_000_000_000, "validation": 1_500_000_000}
SPLIT_SEEDS = 500_000_000
TEST_SEED_OFFSET = SPLIT_SEED_OFFSETS["test"]


# One large object at a time with every speed: the clips the toy feature networks (FVD net, DA feature net)
# are pre-trained on, each from its own seed range.
FEATURE_SPEC = ToySpec(object_size=(6, 10), speeds=(1, 2, 3, 4), grid=1)


@dataclass
class ObjectTruth:
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    size: int
    direction: str
    speed: int
    direction_stated: bool
    speed_stated: bool
    xy: list[tuple[int, int]] = field(default_factory=list)  # top-left corner per frame


def shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) bool mask of a crisp, unaliased shape."""
    r, c = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return (r - size / 2) ** 2 + (c - size / 2) ** 2 <= (size / 2) ** 2
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(c - size / 2) <= r / 2
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _bounce(p: int, v: int, hi: int) -> tuple[int, int]:
    p += v
    if p < 0:
        p, v = -p, -v
    elif p > hi:
        p, v = 2 * hi - p, -v
    return p, v


def path(x: int, y: int, direction: str, speed: int, hi: int, frames: int) -> list[tuple[int, int]]:
    """Top-left corner per frame of an object starting at (x, y) and moving `speed` px a frame in `direction`,
    bouncing off the walls at 0 and `hi` (frame size - object size)."""
    vx, vy = (speed * d for d in DIRECTIONS[direction])
    xy = []
    for _ in range(frames):
        xy.append((x, y))
        x, vx = _bounce(x, vx, hi)
        y, vy = _bounce(y, vy, hi)
    return xy


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark two-colour gradient with a stripe or checker texture, (H, W, 3) float in [0, 255]."""
    c0, c1 = rng.uniform(20, 110, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    ramp = (np.cos(angle) * x + np.sin(angle) * y)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    img = c0 + (c1 - c0) * ramp[..., None]
    period = rng.integers(3, 7)
    if rng.random() < 0.5:  # stripes at 0/45/90/135 degrees
        a = rng.integers(0, 4) * np.pi / 4
        phase = (np.cos(a) * np.mgrid[0:size, 0:size][1] + np.sin(a) * np.mgrid[0:size, 0:size][0])
        tex = (np.floor(phase / period) % 2) * 2 - 1
    else:  # checker
        yy, xx = np.mgrid[0:size, 0:size] // period
        tex = ((yy + xx) % 2) * 2 - 1
    return np.clip(img + 18 * tex[..., None], 0, 255)


def render_clip(seed: int, spec: ToySpec = ToySpec()) -> tuple[np.ndarray, str, list[ObjectTruth]]:
    """One clip: video (T, H, W, 3) uint8, caption, ground truth per object."""
    rng = np.random.default_rng(seed)
    bg = _background(rng, spec.size)
    n = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    objects = []
    for colour in colours:
        size = int(rng.integers(spec.object_size[0], spec.object_size[1] + 1))
        direction = str(rng.choice(list(DIRECTIONS)))
        speed = int(rng.choice(spec.speeds))
        o = ObjectTruth(shape=str(rng.choice(SHAPES)), colour=str(colour), rgb=COLOURS[colour], size=size,
                        direction=direction, speed=speed,
                        direction_stated=bool(rng.random() < spec.p_state_direction),
                        speed_stated=bool(rng.random() < spec.p_state_speed) and len(spec.speeds) > 1)
        hi = spec.size - size
        x, y = (spec.grid * int(v) for v in rng.integers(0, hi // spec.grid + 1, size=2))
        o.xy = path(x, y, direction, speed, hi, spec.frames)
        objects.append(o)
    video = np.repeat(bg[None], spec.frames, axis=0)
    for o in objects:  # later objects are drawn on top
        m = shape_mask(o.shape, o.size)
        for f, (x, y) in enumerate(o.xy):
            video[f, y:y + o.size, x:x + o.size][m] = o.rgb
    return video.round().astype(np.uint8), caption_of(objects, spec), objects


def coverage(objects: list[ObjectTruth], frames: int, size: int) -> np.ndarray:
    """(T, H, W) bool: the pixels some object covers in each frame (ground truth, ignoring draw order)."""
    covered_THW = np.zeros((frames, size, size), bool)
    for o in objects:
        m = shape_mask(o.shape, o.size)
        for f, (x, y) in enumerate(o.xy):
            covered_THW[f, y:y + o.size, x:x + o.size] |= m
    return covered_THW


def caption_of(objects: list[ObjectTruth], spec: ToySpec = ToySpec()) -> str:
    parts = []
    for o in objects:
        words = f"a {o.colour} {o.shape}"
        if o.direction_stated or o.speed_stated:
            words += " moving"
            words += f" {o.direction}" if o.direction_stated else ""
            words += f" {SPEED_WORDS[o.speed == max(spec.speeds)]}" if o.speed_stated else ""
        parts.append(words)
    return " and ".join(parts)


def split_seed(split: str, index: int) -> int:
    """The seed of clip `index` of a split: its offset + index."""
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SEED_OFFSETS)}, got {split!r}")
    return SPLIT_SEED_OFFSETS[split] + index


def to_tensor(video_THWC: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(video_THWC).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(video_CTHW: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    x = video_CTHW.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class ToyVideoDataset(torch.utils.data.Dataset):
    """Clip i of a split is render_clip(split_seed(split, i)): the same on every machine."""

    def __init__(self, split: str = "train", num: int = 100_000, spec: ToySpec = ToySpec()):
        split_seed(split, 0)
        if num > SPLIT_SEEDS:  # its seeds would run into the next split's
            raise ValueError(f"data.{split}_size: {num} toy clips; a split holds at most {SPLIT_SEEDS:_} seeds")
        self.split, self.num, self.spec = split, num, spec

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> dict:
        seed = split_seed(self.split, i)
        video, caption, truth = render_clip(seed, self.spec)
        return {"video": to_tensor(video), "caption": caption, "seed": seed,
                "truth": [asdict(o) for o in truth]}

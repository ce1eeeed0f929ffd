"""Toy-only metrics from the recorded ground truth, which no model is trained on.

A pixel belongs to an object when every channel is within COLOUR_TOL of the object's colour (the
toy's backgrounds are dark and desaturated, its objects bright). Per clip, over frames 1..T-1:
  colour_mass      object-coloured pixels / true area (1 = all there; faint or blurred objects < 1)
  solid            share of frames with one connected object of roughly the true area (0.6-1.4x)
  shape_iou        IoU of the largest component with the true shape centred on it
  count_ok         share of frames where the number of objects seen equals the truth
  path_accel       mean |second difference| of the centroid, px (0 = straight at constant speed;
                   an axis is skipped where the object is within one step of a wall: bounces are allowed)
  first_frame_mae  mean |frame 0 - condition| in [0, 255]
  direction_agree  first move (frame 0 -> 1) goes the truth's way: the stated direction, or away from the wall
                   an object starts against (only clips whose caption states direction)
  speed_agree      first move's speed equals the truth's (only clips whose caption states speed)
  free_<dir>       share of objects whose caption states no direction that first move right / left / up / down:
                   mode collapse shows as one direction taking far more than the real clips' share (~25% each)
  sharpness        Laplacian energy of the clip / that of the real clip (1 = as crisp as real)
  background_mae   mean |clip - real| in [0, 255] over background pixels: outside every true object and every
                   object-coloured pixel of the clip (patch noise, colour shifts, a smeared texture)
  wake_mae         mean |clip - real| over the background an object uncovers (under it in frame t-1, not in t):
                   a smear, a dark trail or an object left behind shows here
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from workbench.data.synthetic import shape_mask

COLOUR_TOL = 60
FREE_DIRECTIONS = ("right", "left", "up", "down")
MIN_PIXELS = 3


def _tracks(video_THWC: np.ndarray, rgb) -> list[dict]:
    """Per frame: coloured pixel count, components, largest component mask and centroid."""
    near = (np.abs(video_THWC.astype(np.int16) - np.array(rgb, np.int16)) <= COLOUR_TOL).all(-1)
    out = []
    for m in near:
        lab, n = ndimage.label(m)
        sizes = ndimage.sum(m, lab, range(1, n + 1)) if n else np.zeros(0)
        big = [i + 1 for i, s in enumerate(sizes) if s >= MIN_PIXELS]
        largest = (lab == (int(np.argmax(sizes)) + 1)) if n else np.zeros_like(m)
        cy, cx = ndimage.center_of_mass(largest) if largest.any() else (np.nan, np.nan)
        out.append({"mass": int(m.sum()), "components": len(big), "largest": largest,
                    "area": int(largest.sum()), "centroid": np.array([cx, cy])})
    return out


def _solid(track: dict, area: float) -> bool:
    """One connected object of roughly the true area (0.6-1.4x) in this frame."""
    return track["components"] == 1 and 0.6 <= track["area"] / area <= 1.4


def solid_by_frame(video_THWC: np.ndarray, truth: list[dict]) -> np.ndarray:
    """(T-1,) share of the clip's objects that are solid in each frame 1..T-1 (frame 0 is the condition)."""
    per_object = []
    for obj in truth:
        area = float(shape_mask(obj["shape"], obj["size"]).sum())
        per_object.append([_solid(f, area) for f in _tracks(video_THWC, obj["rgb"])[1:]])
    return np.mean(per_object, axis=0)


def _shape_iou(largest: np.ndarray, shape: str, size: int) -> float:
    if not largest.any():
        return 0.0
    ref = shape_mask(shape, size)
    cy, cx = ndimage.center_of_mass(largest)
    ry, rx = ndimage.center_of_mass(ref)
    oy, ox = int(round(cy - ry)), int(round(cx - rx))
    placed = np.zeros_like(largest)
    H, W = largest.shape
    ys, xs = np.nonzero(ref)
    ys, xs = ys + oy, xs + ox
    ok = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    placed[ys[ok], xs[ok]] = True
    return float((placed & largest).sum() / max((placed | largest).sum(), 1))


def path_centroids(xy: list, size: int) -> np.ndarray:
    """(T, 2) centroids (x, y) of an object of `size` whose top-left corners are `xy`."""
    return np.array([(x + size / 2 - 0.5, y + size / 2 - 0.5) for x, y in xy])


def start_motion(centroids: np.ndarray) -> tuple[str, float]:
    """Direction and speed (px/frame) of the first move, frame 0 -> 1. (Not over frames 0 -> 2: an object that
    bounces at frame 1 is back at its start there, with no direction; a fifth of the toy's clips do.)"""
    d = centroids[1] - centroids[0]
    if np.isnan(d).any():
        return "none", float("nan")
    if not np.abs(d).any():
        return "none", 0.0
    axis = int(np.argmax(np.abs(d)))
    name = ("right", "left")[int(d[0] < 0)] if axis == 0 else ("down", "up")[int(d[1] < 0)]
    return name, float(np.abs(d).max())


def first_move_follows(video_THWC: np.ndarray, obj: dict, xy: list) -> bool:
    """Whether the object's first move in the video (frame 0 -> 1) goes the way of the path `xy` (top-left corners)."""
    cents = np.stack([f["centroid"] for f in _tracks(video_THWC[:2], obj["rgb"])])
    return start_motion(cents)[0] == start_motion(path_centroids(xy, obj["size"]))[0]


def _laplacian_energy(video_THWC: np.ndarray) -> float:
    x = video_THWC[1:].astype(np.float32).mean(-1)
    lap = ndimage.laplace(x, mode="nearest") if x.ndim == 2 else np.stack([ndimage.laplace(f, mode="nearest") for f in x])
    return float((lap ** 2).mean())


def clip_metrics(video_THWC: np.ndarray, real_THWC: np.ndarray, truth: list[dict]) -> dict[str, float]:
    """Oracle metrics of one generated clip (uint8 T,H,W,3) against its real clip and ground truth."""
    T, H, W, _ = video_THWC.shape
    rows = []
    for obj in truth:
        tr = _tracks(video_THWC, obj["rgb"])
        area = float(shape_mask(obj["shape"], obj["size"]).sum())
        frames = tr[1:]
        cents = np.stack([f["centroid"] for f in tr])
        accel = []
        lo = (obj["size"] - 1) / 2                       # centroid limits: the object touches a wall there
        hi = np.array([W - 1 - lo, H - 1 - lo])
        for t in range(1, T - 1):
            c = cents[t - 1:t + 2]
            if np.isnan(c).any():
                continue
            free = (c[1] - lo >= obj["speed"]) & (hi - c[1] >= obj["speed"])  # no bounce possible on this axis
            if free.any():
                accel.append(float(np.abs(c[2] - 2 * c[1] + c[0])[free].max()))
        true_dir, true_speed = start_motion(path_centroids(obj["xy"], obj["size"]))
        gen_dir, gen_speed = start_motion(cents)
        rows.append({
            "colour_mass": float(np.mean([f["mass"] / area for f in frames])),
            "solid": float(np.mean([_solid(f, area) for f in frames])),
            "shape_iou": float(np.mean([_shape_iou(f["largest"], obj["shape"], obj["size"]) for f in frames])),
            "path_accel": float(np.mean(accel)) if accel else float("nan"),
            "direction_agree": float(gen_dir == true_dir) if obj["direction_stated"] else float("nan"),
            "speed_agree": float(abs(gen_speed - true_speed) < 0.5) if obj["speed_stated"] else float("nan"),
            **{f"free_{d}": float("nan") if obj["direction_stated"] else float(gen_dir == d) for d in FREE_DIRECTIONS},
            "components": [f["components"] for f in frames],
        })
    seen = np.sum([r.pop("components") for r in rows], axis=0)
    out = {k: float(np.nanmean([r[k] for r in rows])) if not all(np.isnan(r[k]) for r in rows) else float("nan")
           for k in rows[0]}
    out["count_ok"] = float(np.mean(seen == len(truth)))
    out["first_frame_mae"] = float(np.abs(video_THWC[0].astype(np.float32) - real_THWC[0]).mean())
    out["sharpness"] = _laplacian_energy(video_THWC) / max(_laplacian_energy(real_THWC), 1e-6)
    out.update(background_errors(video_THWC, real_THWC, truth))
    return out


def covered(truth: list[dict], T: int, H: int, W: int) -> np.ndarray:
    """(T, H, W) bool: the pixels some true object covers in each frame."""
    out = np.zeros((T, H, W), bool)
    for obj in truth:
        m = shape_mask(obj["shape"], obj["size"])
        for t, (x, y) in enumerate(obj["xy"][:T]):
            out[t, y:y + obj["size"], x:x + obj["size"]] |= m
    return out


def drawn(video_THWC: np.ndarray, truth: list[dict]) -> np.ndarray:
    """(T, H, W) bool: the clip's pixels coloured like some true object, wherever they are."""
    out = np.zeros(video_THWC.shape[:3], bool)
    for obj in truth:
        out |= (np.abs(video_THWC.astype(np.int16) - np.array(obj["rgb"], np.int16)) <= COLOUR_TOL).all(-1)
    return out


def background_mask(video_THWC: np.ndarray, truth: list[dict]) -> np.ndarray:
    """(T, H, W) bool: outside every true object and every object-coloured pixel of the clip."""
    return ~(covered(truth, *video_THWC.shape[:3]) | drawn(video_THWC, truth))


def background_errors(video_THWC: np.ndarray, real_THWC: np.ndarray, truth: list[dict]) -> dict[str, float]:
    """background_mae and wake_mae over frames 1..T-1 (see the module docstring)."""
    true = covered(truth, *video_THWC.shape[:3])
    err = np.abs(video_THWC.astype(np.float32) - real_THWC.astype(np.float32)).mean(-1)   # T, H, W
    background = ~(true | drawn(video_THWC, truth))
    wake = true[:-1] & ~true[1:]                                                             # uncovered at t
    mean = lambda m, e: float(e[m].mean()) if m.any() else float("nan")  # noqa: E731
    return {"background_mae": mean(background[1:], err[1:]), "wake_mae": mean(wake, err[1:])}


def oracle_metrics(videos_THWC: list[np.ndarray], reals_THWC: list[np.ndarray], truths: list[list[dict]]) -> dict:
    """Mean of `clip_metrics` over clips (NaN entries, e.g. unstated directions, are left out)."""
    per = [clip_metrics(v, r, t) for v, r, t in zip(videos_THWC, reals_THWC, truths)]
    return {k: float(np.nanmean([p[k] for p in per])) if any(not np.isnan(p[k]) for p in per) else float("nan")
            for k in per[0]}

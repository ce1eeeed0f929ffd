"""VBench-I2V dimensions (Huang et al. 2024; VBench and VBench-I2V code) over pluggable frozen frame-feature nets.

Per clip, as VBench computes them (f_t: L2-normalised features of frame t, cos clipped at 0 as VBench does):
  subject_consistency     mean_{t>=1} (cos(f_t, f_{t-1}) + cos(f_t, f_0)) / 2 over subject features (VBench: DINO)
  background_consistency  the same over background features (VBench: CLIP ViT-B/32)
  temporal_flickering     (255 - mean_t mean|x_t - x_{t-1}|) / 255
  motion_smoothness       (255 - mean|x_odd - interp(x_even)|) / 255; VBench interpolates with AMT-S
  dynamic_degree          1 if the mean of the top 5% flow magnitudes exceeds 6 min(H, W) / 256 px in at least
                          round(4 T / 16) consecutive pairs; VBench's flow is RAFT
  aesthetic_quality       LAION aesthetic head on CLIP ViT-L/14 / 10;  imaging_quality  MUSIQ (SPAQ) / 100
  i2v_subject             0.4 max_t cos(image, f_t) + 0.3 mean_t cos(f_t, f_{t-1}) + 0.3 min_t cos(f_t, f_{t-1})
                          over subject features (VBench-I2V: DINO); i2v_background the same over background
                          features (VBench-I2V: DreamSim). The image is the conditioning first frame.
Proxies, built in and labelled `_proxy` in every column, where VBench needs a network the toy lacks:
  motion_smoothness_proxy  the same formula; odd frames interpolated by symmetric block matching (5x5 SAD)
  dynamic_degree_proxy     the same rule on block-matching flow
  aesthetic_quality_proxy  colourfulness (Hasler & Suesstrunk 2003) / 109 ("extremely colourful"), at most 1
  imaging_quality_proxy    1 - blur effect (Crete-Roffet et al. 2007; window 11 as skimage) of the luma
Block matching runs on frames downscaled to a short side of at most 32 px, searching +-short/6 px.
Groups: each dimension min-max normalised and weighted as VBench's scripts/constant.py, then averaged:
  temporal_quality  subject and background consistency, temporal flickering, motion smoothness, dynamic degree (x0.5)
  frame_quality     aesthetic and imaging quality;  a group with a proxy in it is itself labelled `_proxy`.
With the `vbench` package importable and its weight cache present, `run_vbench` computes the quality dimensions
with VBench's own networks (custom_input mode, local weights) instead of the built-in ones and proxies.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as nnf
from scipy import ndimage

from workbench.eval.feature_nets import FrameFeatures

NORMALIZE = {"subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
             "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975),
             "dynamic_degree": (0.0, 1.0), "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0)}
WEIGHT = {"dynamic_degree": 0.5}
GROUPS = {"temporal_quality": ("subject_consistency", "background_consistency", "temporal_flickering",
                               "motion_smoothness", "dynamic_degree"),
          "frame_quality": ("aesthetic_quality", "imaging_quality")}
QUALITY_DIMS = [d for g in GROUPS.values() for d in g]


@dataclass
class VBenchNets:
    subject: FrameFeatures      # VBench: DINO; here the toy FVD net's subject embedding or DINOv2
    background: FrameFeatures   # VBench: CLIP (consistency), DreamSim (I2V); here the toy background or DINOv2


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nnf.cosine_similarity(a, b, dim=-1).clamp_min(0)


def consistency(f_BTD: torch.Tensor) -> np.ndarray:
    """VBench subject/background consistency per clip: mean of (cos to previous + cos to first) / 2."""
    return ((_cos(f_BTD[:, 1:], f_BTD[:, :-1]) + _cos(f_BTD[:, 1:], f_BTD[:, :1])) / 2).mean(1).double().numpy()


def i2v_consistency(f_BTD: torch.Tensor, image_BD: torch.Tensor) -> np.ndarray:
    """VBench-I2V subject/background per clip: 0.4 max cos(image, f_t) + 0.3 mean + 0.3 min cos(f_t, f_{t-1})."""
    to_image = _cos(f_BTD, image_BD[:, None])
    consec = _cos(f_BTD[:, 1:], f_BTD[:, :-1])
    return (0.4 * to_image.max(1).values + 0.3 * consec.mean(1) + 0.3 * consec.min(1).values).double().numpy()


def temporal_flickering(px_BTCHW: torch.Tensor) -> np.ndarray:
    """VBench temporal flickering per clip: (255 - mean |x_t - x_{t-1}|) / 255 on [0, 255] pixels."""
    return ((255 - (px_BTCHW[:, 1:] - px_BTCHW[:, :-1]).abs().mean((1, 2, 3, 4))) / 255).double().numpy()


def _box(x: torch.Tensor, w: int) -> torch.Tensor:
    """Sum over the w x w window around each pixel (zero outside), by integral image."""
    r = w // 2
    c = nnf.pad(x, (r + 1, r, r + 1, r)).cumsum(-1).cumsum(-2)
    return c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]


def block_match(a: torch.Tensor, b: torch.Tensor, radius: int, symmetric: bool = False, window: int = 5):
    """Per pixel, the displacement d in [-radius, radius]^2 minimising the 5x5 sum of |a(p) - b(p + d)| (or,
    symmetric, |a(p - d) - b(p + d)|), ties to the smallest |d|. Returns flow (N, 2, H, W) as (dx, dy) and
    the matched midpoint (a + b) / 2 (N, C, H, W): the interpolated frame when symmetric."""
    N, C, H, W = a.shape
    r = radius
    ap, bp = nnf.pad(a, [r] * 4, mode="replicate"), nnf.pad(b, [r] * 4, mode="replicate")
    best = torch.full((N, 1, H, W), float("inf"), dtype=a.dtype)
    flow, mid = torch.zeros(N, 2, H, W, dtype=a.dtype), torch.zeros_like(a)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            a_s = ap[..., r - dy:r - dy + H, r - dx:r - dx + W] if symmetric else a
            b_s = bp[..., r + dy:r + dy + H, r + dx:r + dx + W]
            cost = _box((a_s - b_s).abs().sum(1, keepdim=True), window) + 1e-3 * (dx * dx + dy * dy)
            better = cost < best
            best = torch.where(better, cost, best)
            flow = torch.where(better, torch.tensor([dx, dy], dtype=a.dtype).view(1, 2, 1, 1), flow)
            if symmetric:
                mid = torch.where(better, (a_s + b_s) / 2, mid)
    return flow, mid


def _work_scale(px_BTCHW: torch.Tensor, short: int = 32) -> torch.Tensor:
    B, T, C, H, W = px_BTCHW.shape
    s = min(1.0, short / min(H, W))
    if s == 1.0:
        return px_BTCHW
    x = nnf.interpolate(px_BTCHW.reshape(B * T, C, H, W), scale_factor=s, mode="area")
    return x.reshape(B, T, C, *x.shape[-2:])


def interpolation_error(px_BTCHW: torch.Tensor) -> torch.Tensor:
    """Per pixel of each odd frame, |its block-matching interpolation from the even frames beside it - itself|,
    mean over channels, at the working scale: (B, k, h, w) with k = the odd frames that have an even frame after."""
    x = _work_scale(px_BTCHW)
    B, T, C, H, W = x.shape
    even = x[:, 0::2]
    k = min(even.shape[1] - 1, x[:, 1::2].shape[1])
    if k < 1:
        return x.new_zeros(B, 0, H, W)
    _, mid = block_match(even[:, :k].reshape(-1, C, H, W), even[:, 1:k + 1].reshape(-1, C, H, W),
                         max(1, round(min(H, W) / 6)), symmetric=True)
    return (mid.reshape(B, k, C, H, W).round() - x[:, 1:2 * k:2]).abs().mean(2)


def motion_smoothness_proxy(px_BTCHW: torch.Tensor) -> np.ndarray:
    """VBench motion smoothness per clip with block-matching interpolation of the odd frames in place of AMT."""
    err = interpolation_error(px_BTCHW)
    if err.shape[1] == 0:
        return np.ones(err.shape[0])
    return ((255 - err.mean((1, 2, 3))) / 255).double().numpy()


def dynamic_degree_proxy(px_BTCHW: torch.Tensor) -> np.ndarray:
    """VBench dynamic degree per clip (1 = moving) with block-matching flow in place of RAFT."""
    x = _work_scale(px_BTCHW)
    B, T, C, H, W = x.shape
    flow, _ = block_match(x[:, :-1].reshape(-1, C, H, W), x[:, 1:].reshape(-1, C, H, W), max(1, round(min(H, W) / 6)))
    mag = flow.norm(dim=1).reshape(B, T - 1, H * W)
    top = mag.sort(-1, descending=True).values[..., :max(1, int(H * W * 0.05))].mean(-1)
    thres, count = 6.0 * min(H, W) / 256.0, round(4 * T / 16.0)
    return ((top > thres).sum(1) >= max(count, 1)).double().numpy()


def aesthetic_quality_proxy(px_BTCHW: torch.Tensor) -> np.ndarray:
    """Colourfulness sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2) (Hasler & Suesstrunk 2003) / 109 per frame."""
    r, g, b = px_BTCHW.double().unbind(2)
    rg, yb = r - g, 0.5 * (r + g) - b
    m = (rg.std((2, 3), unbiased=False) ** 2 + yb.std((2, 3), unbiased=False) ** 2).sqrt() \
        + 0.3 * (rg.mean((2, 3)) ** 2 + yb.mean((2, 3)) ** 2).sqrt()
    return (m / 109).clamp(max=1).mean(1).numpy()


def blur_effect(gray_NHW: np.ndarray, h_size: int = 11) -> np.ndarray:
    """Crete-Roffet et al. (2007) no-reference blur per image, 0 (sharp) to 1 (blurred), as skimage's blur_effect."""
    N, H, W = gray_NHW.shape
    crop = (slice(None), slice(2, H - 1), slice(2, W - 1))
    out = []
    for ax in (1, 2):
        sharp = np.abs(np.diff(gray_NHW, axis=ax))
        blurred = np.abs(np.diff(ndimage.uniform_filter1d(gray_NHW, h_size, axis=ax), axis=ax))
        m1 = sharp[crop].sum((1, 2))
        m2 = np.maximum(0, sharp - blurred)[crop].sum((1, 2))
        out.append(np.where(m1 > 0, np.abs(m1 - m2) / np.maximum(m1, 1e-12), 1.0))
    return np.maximum(*out)


def imaging_quality_proxy(px_BTCHW: torch.Tensor) -> np.ndarray:
    """1 - blur effect of the luma (0.2125 R + 0.7154 G + 0.0721 B), mean over frames."""
    B, T = px_BTCHW.shape[:2]
    luma = torch.tensor([0.2125, 0.7154, 0.0721], dtype=torch.float64).view(1, 1, 3, 1, 1)
    y = (px_BTCHW.double() / 255 * luma).sum(2)
    return 1 - blur_effect(y.reshape(B * T, *y.shape[2:]).numpy()).reshape(B, T).mean(1)


@torch.no_grad()
def vbench_clips(video_BCTHW: torch.Tensor, image_B3HW: torch.Tensor, nets: VBenchNets,
                 proxies: bool = True) -> dict[str, np.ndarray]:
    """Per-clip VBench-I2V dimensions of clips in [-1, 1] (B, 3, T, H, W) conditioned on `image_B3HW`."""
    B, C, T, H, W = video_BCTHW.shape
    frames = video_BCTHW.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    out = {}
    for kind, net in (("subject", nets.subject), ("background", nets.background)):
        f = net(frames).reshape(B, T, -1)
        out[f"{kind}_consistency"] = consistency(f)
        out[f"i2v_{kind}"] = i2v_consistency(f, net(image_B3HW))
    px = ((video_BCTHW.permute(0, 2, 1, 3, 4).float() + 1) * 127.5).round()     # B, T, C, H, W in [0, 255]
    out["temporal_flickering"] = temporal_flickering(px)
    if proxies:
        out["motion_smoothness_proxy"] = motion_smoothness_proxy(px)
        out["dynamic_degree_proxy"] = dynamic_degree_proxy(px)
        out["aesthetic_quality_proxy"] = aesthetic_quality_proxy(px)
        out["imaging_quality_proxy"] = imaging_quality_proxy(px)
    return out


def quality_groups(scores: dict[str, float]) -> dict[str, float]:
    """Temporal Quality and Frame Quality: VBench's normalised, weighted means (`_proxy` where a member is one)."""
    out = {}
    for group, dims in GROUPS.items():
        total, weights, proxy = 0.0, 0.0, False
        for d in dims:
            key = d if d in scores else f"{d}_proxy"
            if key not in scores:
                break
            proxy |= key.endswith("_proxy")
            lo, hi = NORMALIZE[d]
            total += WEIGHT.get(d, 1.0) * (scores[key] - lo) / (hi - lo)
            weights += WEIGHT.get(d, 1.0)
        else:
            out[f"{group}_proxy" if proxy else group] = total / weights
    return out


def vbench_available() -> bool:
    """True when the `vbench` package imports and its weight cache (VBENCH_CACHE_DIR or ~/.cache/vbench) is filled."""
    cache = Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))
    return importlib.util.find_spec("vbench") is not None and cache.is_dir() and any(cache.iterdir())


def run_vbench(mp4_dir: str | Path, out_dir: str | Path, device: str = "cuda") -> dict[str, float]:
    """VBench's own quality dimensions on a folder of mp4 clips (custom_input mode, local weights only)."""
    if not vbench_available():
        raise RuntimeError("the vbench package or its local weight cache (VBENCH_CACHE_DIR, ~/.cache/vbench) "
                           "is missing")
    from vbench import VBench
    VBench(device, "", str(out_dir)).evaluate(videos_path=str(mp4_dir), name="workbench",
                                              dimension_list=QUALITY_DIMS, local=True, mode="custom_input")
    results = json.loads((Path(out_dir) / "workbench_eval_results.json").read_text())
    return {dim: float(v[0]) for dim, v in results.items()}

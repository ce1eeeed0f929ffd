"""Frechet video distance: a numerically stable Frechet distance and video feature extractors behind one interface.

An extractor maps clips (B, 3, T, H, W) in [-1, 1] to features (B, D) and names its variant:
  ToyFVDExtractor  the toy FVD net shipped in experiments/toy/fvd (workbench.eval.feature_nets); clips resized to
                   its 8 x 24 x 24 input; the 64-d video embedding its linear heads read. Trained on labels (shape,
                   colour, direction, speed), it hardly sees backgrounds (bench/fvd_background.py).
  ToyAEExtractor   the toy video autoencoder shipped in experiments/toy/fvd_ae (workbench.eval.toy_ae), self-supervised
                   (reconstruction only), so it sees backgrounds too; its pooled encoder embedding. The evaluation
                   reports it beside the toy FVD net as the column `fvd_ae` ("FVD (toy-ae)").
  I3DExtractor     Kinetics-400 I3D as the StyleGAN-V TorchScript `i3d_torchscript.pt`, from a local file only;
                   frames resized to 224 x 224 (bilinear, as the original FVD), [-1, 1], at least 16 frames;
                   its 400-d pre-softmax output (Unterthiner et al. 2019; Skorokhodov et al. 2022).
Every FVD value carries its variant (`fvd_variant`): extractor and weight hash, input resolution and frames,
the number of videos and the reference set.
"""
from __future__ import annotations

import abc
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as nnf

from workbench import HOME_VARIABLE, shipped

# the shipped toy networks' weights, found through workbench.shipped (an installed package reads $WORKBENCH_HOME)
TOY_FVD_WEIGHTS = Path("experiments/toy/fvd/toy_fvd.safetensors")
TOY_AE_WEIGHTS = Path("experiments/toy/fvd_ae/toy_fvd_ae.safetensors")
HOME_HINT = f"; an installed workbench reads them under ${HOME_VARIABLE}, a folder holding the repository's experiments/"


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) (Dowson & Landau 1982), by eigendecomposition.

    Tr (S1 S2)^1/2 = sum_i sqrt(lambda_i(S1^1/2 S2 S1^1/2)): both matrices are symmetric PSD, so this is
    exact and stable where S1, S2 are singular (fewer videos than feature dimensions), with no eps offset.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    lam, vec = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (vec * np.sqrt(np.clip(lam, 0, None))) @ vec.T
    inner = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(max(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features (N, D)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FVD needs features of at least 2 videos, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def fvd(fake_features: np.ndarray, real_features: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(*feature_stats(fake_features), *feature_stats(real_features))


def file_hash(path: str | Path) -> str:
    """First 12 hex digits of the file's SHA-256: names the weights in every reported variant."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def require_file(path: str | Path, what: str) -> Path:
    """The path, or FileNotFoundError in one line naming it (nothing is ever downloaded)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found (weights are read from local files only, never downloaded)")
    return p


class VideoExtractor(abc.ABC):
    """Interface: clips (B, 3, T, H, W) in [-1, 1] -> features (B, D) float64, and the variant they come from."""

    name: str
    weight_hash: str
    frames: int               # frames the network sees
    size: tuple[int, int]     # (H, W) the network sees

    @abc.abstractmethod
    def __call__(self, video_BCTHW: torch.Tensor) -> np.ndarray:
        """Features of the input (see the class docstring)."""

    def describe(self) -> str:
        return f"{self.name}@{self.weight_hash} {self.size[0]}x{self.size[1]}x{self.frames}f"


class ToyFVDExtractor(VideoExtractor):
    """The toy FVD net's video embedding (workbench.eval.feature_nets.ToyFVDNet)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        from workbench.eval.feature_nets import load_toy_fvd_net
        self.path = require_file(path or shipped(TOY_FVD_WEIGHTS), "toy FVD network weights (rebuild: python -m "
                                 f"workbench features train{'' if path else HOME_HINT})")
        self.net = load_toy_fvd_net(self.path).to(device)
        self.name, self.weight_hash, self.device = "toy-fvd", file_hash(self.path), device
        self.frames, self.size = self.net.frames, (self.net.size, self.net.size)

    @torch.no_grad()
    def __call__(self, video_BCTHW: torch.Tensor) -> np.ndarray:
        return self.net(video_BCTHW.to(self.device))["video"].double().cpu().numpy()


class ToyAEExtractor(VideoExtractor):
    """The toy video autoencoder's pooled encoder embedding (workbench.eval.toy_ae.ToyVideoAE.embed)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        from workbench.eval.toy_ae import load_toy_video_ae
        self.path = require_file(path or shipped(TOY_AE_WEIGHTS), "toy video autoencoder weights (rebuild: python -m "
                                 f"workbench features train --kind ae --out experiments/toy/fvd_ae"
                                 f"{'' if path else HOME_HINT})")
        self.net = load_toy_video_ae(self.path).to(device)
        self.name, self.weight_hash, self.device = "toy-ae", file_hash(self.path), device
        self.frames, self.size = self.net.frames, (self.net.size, self.net.size)

    @torch.no_grad()
    def __call__(self, video_BCTHW: torch.Tensor) -> np.ndarray:
        return self.net.embed(video_BCTHW.to(self.device)).double().cpu().numpy()


class I3DExtractor(VideoExtractor):
    """Kinetics-400 I3D (StyleGAN-V TorchScript): 224 x 224 bilinear, [-1, 1], >= 16 frames, 400-d logits."""

    min_frames = 16

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 8):
        self.path = require_file(path, "I3D TorchScript model (the StyleGAN-V i3d_torchscript.pt)")
        self.net = torch.jit.load(str(self.path), map_location=device).eval()
        self.name, self.weight_hash, self.device, self.batch_size = "i3d-k400", file_hash(self.path), device, batch_size
        self.frames, self.size = 0, (224, 224)  # frames: all of the clip's (>= 16)

    def describe(self) -> str:
        return f"{self.name}@{self.weight_hash} 224x224x(clip frames)"

    def preprocess(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = video_BCTHW.shape
        if T < self.min_frames:
            raise ValueError(f"I3D FVD needs at least {self.min_frames} frames per clip, got {T}")
        frames = video_BCTHW.float().permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        frames = nnf.interpolate(frames, size=self.size, mode="bilinear", align_corners=False)
        return frames.reshape(B, T, C, *self.size).permute(0, 2, 1, 3, 4).clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, video_BCTHW: torch.Tensor) -> np.ndarray:
        out = []
        for chunk in video_BCTHW.split(self.batch_size):
            x = self.preprocess(chunk).to(self.device)
            out.append(self.net(x, rescale=False, resize=False, return_features=True).double().cpu())
        return torch.cat(out).numpy()


def _is_toy_ae(path: str | Path) -> bool:
    """Whether a toy .safetensors file holds the video autoencoder (its tensors are encoder.* / decoder.*)."""
    from workbench.models.weights import tensor_names
    return Path(path).is_file() and any(n.startswith("encoder.") for n in tensor_names(path, "--fvd-extractor"))


def load_extractor(spec: str = "toy", device: str = "cpu") -> VideoExtractor:
    """'toy' (the shipped toy FVD net), 'toy-ae' (the shipped toy video autoencoder), a .safetensors file of
    either, or an I3D TorchScript file (.pt)."""
    if spec == "toy":
        return ToyFVDExtractor(device=device)
    if spec == "toy-ae":
        return ToyAEExtractor(device=device)
    if str(spec).endswith(".safetensors"):
        return ToyAEExtractor(spec, device) if _is_toy_ae(spec) else ToyFVDExtractor(spec, device)
    return I3DExtractor(spec, device)

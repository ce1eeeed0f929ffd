"""Fidelity to the real continuation of the same first frame: PSNR and SSIM over frames 1..T-1.

Clips are uint8-valued (B, T, H, W, 3) arrays or tensors; frame 0 is the condition and is left out.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as nnf

PSNR_CAP = 100.0  # dB, the PSNR of identical frames (MSE floor 255^2 / 10^10)


def _frames(x) -> torch.Tensor:
    """(B, T, H, W, 3) -> (B, T-1, 3, H, W) float64 in [0, 255], frame 0 dropped."""
    return torch.as_tensor(np.asarray(x)).double()[:, 1:].permute(0, 1, 4, 2, 3)


def psnr(fake_BTHWC, real_BTHWC) -> np.ndarray:
    """Per clip: mean over frames of 10 log10(255^2 / MSE), capped at PSNR_CAP."""
    mse = (_frames(fake_BTHWC) - _frames(real_BTHWC)).pow(2).mean((2, 3, 4))
    db = 10 * torch.log10(255.0 ** 2 / mse.clamp_min(255.0 ** 2 / 10 ** (PSNR_CAP / 10)))
    return db.mean(1).numpy()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,) in float64; the 2-D window is its outer product."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_map(x_N1HW: torch.Tensor, y_N1HW: torch.Tensor, data_range: float = 255.0, size: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, population moments, valid region."""
    g = gaussian_window(size, sigma).to(x_N1HW)
    blur = lambda z: nnf.conv2d(nnf.conv2d(z, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))  # noqa: E731 (separable)
    mu_x, mu_y = blur(x_N1HW), blur(y_N1HW)
    var_x = blur(x_N1HW * x_N1HW) - mu_x ** 2
    var_y = blur(y_N1HW * y_N1HW) - mu_y ** 2
    cov = blur(x_N1HW * y_N1HW) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim(fake_BTHWC, real_BTHWC) -> np.ndarray:
    """Per clip: SSIM averaged over the valid region, the RGB channels and frames 1..T-1."""
    x, y = _frames(fake_BTHWC), _frames(real_BTHWC)
    B, T, C, H, W = x.shape
    size = min(11, H - (H + 1) % 2, W - (W + 1) % 2)  # frames smaller than 11 px: the largest odd window
    m = ssim_map(x.reshape(-1, 1, H, W), y.reshape(-1, 1, H, W), size=size)
    return m.reshape(B, -1).mean(1).numpy()

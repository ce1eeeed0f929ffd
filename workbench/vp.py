"""The one bridge from a diffusion teacher on a variance-preserving (VP) schedule to the flow convention (flow.py).

A VP model sees x_s = alpha_s x0 + sigma_s eps with alpha_s^2 + sigma_s^2 = 1 (alpha_s^2 = alphas_cumprod[s] of its
diffusers scheduler) and predicts eps, v = alpha_s eps - sigma_s x0 (Salimans & Ho 2022), or x0. The flow sees
x_t = (1 - t) x0 + t eps and wants the velocity eps - x0 (Eq. 2). The two paths are one path rescaled:

    t = sigma_s / (alpha_s + sigma_s)   <=>   x_vp = (alpha_s + sigma_s) x_t,

since (alpha + sigma)((1 - t) x0 + t eps) = alpha x0 + sigma eps. So at flow time t the bridge asks the teacher at
the VP time s whose log-SNR lambda_s = log(alpha_s^2 / sigma_s^2) equals 2 log((1 - t) / t) (the same point of the
path; alpha_t = (1 - t) / n_t, sigma_t = t / n_t with n_t = sqrt((1 - t)^2 + t^2)), on x_vp = x_t / n_t, and turns
its prediction into (x0_hat, eps_hat), then v = eps_hat - x0_hat:

    epsilon: x0_hat = (x_vp - sigma eps_hat) / alpha
    v:       x0_hat = alpha x_vp - sigma v_hat,   eps_hat = sigma x_vp + alpha v_hat      (alpha^2 + sigma^2 = 1)
    x0:      eps_hat = (x_vp - alpha x0_hat) / sigma

s is fractional where lambda_t falls between two of the schedule's timesteps: lambda is interpolated linearly in
the timestep index (the model's timestep embedding is continuous in s). Flow times whose lambda lies outside the
schedule's range (near t = 0 and t = 1: the schedule never reaches pure data or pure noise) and schedules whose
lambda does not fall strictly with s are refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.flow import expand_t

PREDICTIONS = ("epsilon", "v", "x0")                  # what a VP network predicts (model.prediction)
FROM_DIFFUSERS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}   # a scheduler's prediction_type
# alphas_cumprod[-1] of a zero-terminal-SNR schedule (0: pure noise), as diffusers' EulerDiscreteScheduler keeps it:
# CogVideoX-5B's bridge then reaches t = 0.99976.
ZERO_SNR_FLOOR = 2.0 ** -24


def log_snr_of_flow_time(t_B: torch.Tensor) -> torch.Tensor:
    """lambda(t) = log(alpha^2 / sigma^2) = 2 log((1 - t) / t): the VP log-SNR at the flow path's point t."""
    return 2 * (torch.log1p(-t_B) - torch.log(t_B))


@dataclass(frozen=True)
class VPSchedule:
    """A diffusers scheduler's `alphas_cumprod` (N,), and the flow-time range it covers."""
    alphas_cumprod: torch.Tensor

    def __post_init__(self):
        a = self.alphas_cumprod.double()
        if a.dim() != 1 or len(a) < 2 or not torch.isfinite(a).all() or (a <= 0).any() or (a >= 1).any():
            raise ValueError("alphas_cumprod: expected a 1-D schedule of at least 2 values strictly inside (0, 1)")
        if not (a[1:] < a[:-1]).all():
            k = int(torch.nonzero(a[1:] >= a[:-1])[0])
            raise ValueError(f"alphas_cumprod: not strictly decreasing at timestep {k + 1} ({a[k + 1]:.6g} after "
                             f"{a[k]:.6g}); a VP schedule loses signal at every step")

    @classmethod
    def from_scheduler_config(cls, config: dict) -> VPSchedule:
        """The schedule of a diffusers scheduler config: the alphas_cumprod of the class its `_class_name` names
        (CogVideoXDDIMScheduler's apply its snr_shift_scale, which DDPMScheduler's betas alone miss), else
        DDPMScheduler's. A zero terminal SNR (rescale_betas_zero_snr: pure noise at the last timestep) is kept at
        ZERO_SNR_FLOOR, as diffusers' EulerDiscreteScheduler keeps it, so the log-SNR stays finite."""
        import diffusers
        named = getattr(diffusers, str(config.get("_class_name")), None)
        if not (isinstance(named, type) and issubclass(named, diffusers.SchedulerMixin)
                and hasattr(named.from_config(config), "alphas_cumprod")):
            named = diffusers.DDPMScheduler
        alphas_cumprod = named.from_config(config).alphas_cumprod.clone()
        alphas_cumprod[-1] = alphas_cumprod[-1].clamp(min=ZERO_SNR_FLOOR)
        return cls(alphas_cumprod)

    @property
    def log_snr(self) -> torch.Tensor:                           # (N,) decreasing
        a = self.alphas_cumprod.double()
        return torch.log(a) - torch.log1p(-a)

    @property
    def flow_times(self) -> torch.Tensor:
        """(N,) float64: the flow time t = sigma_s / (alpha_s + sigma_s) of each of the schedule's timesteps s."""
        a = self.alphas_cumprod.double()
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        return sigma / (alpha + sigma)

    @property
    def t_range(self) -> tuple[float, float]:
        """The flow times the schedule reaches: t = sigma / (alpha + sigma) at its first and last timestep."""
        lam = self.log_snr
        t = lambda l: 1 / (1 + math.exp(l / 2))  # noqa: E731   lambda = 2 log((1 - t) / t) solved for t
        return t(float(lam[0])), t(float(lam[-1]))

    def timestep(self, t_B: torch.Tensor) -> torch.Tensor:
        """The (fractional) VP timestep s at flow time t: lambda_s = lambda(t), interpolated in s."""
        lo, hi = self.t_range
        if ((t_B < lo * (1 - 1e-9)) | (t_B > hi * (1 + 1e-9))).any():
            bad = t_B[(t_B < lo * (1 - 1e-9)) | (t_B > hi * (1 + 1e-9))][0]
            raise ValueError(f"flow time {float(bad):.6g} is outside the VP schedule's range [{lo:.6g}, {hi:.6g}] "
                             f"(its first and last timestep): a bridged teacher is not asked beyond its schedule")
        lam, grid = log_snr_of_flow_time(t_B.double()), self.log_snr.to(t_B.device)
        k = torch.searchsorted(-grid, -lam).clamp(1, len(grid) - 1)   # grid[k-1] >= lam >= grid[k]
        w = (grid[k - 1] - lam) / (grid[k - 1] - grid[k])
        return (k - 1 + w).to(t_B.dtype)


def vp_coefficients(t_B: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of the VP point at flow time t, broadcast against `like` (B,C,T,H,W)."""
    n = torch.sqrt((1 - t_B) ** 2 + t_B ** 2)
    return expand_t((1 - t_B) / n, like), expand_t(t_B / n, like)


def flow_velocity(prediction: torch.Tensor, x_vp: torch.Tensor, t_B: torch.Tensor, kind: str) -> torch.Tensor:
    """A VP prediction (kind in PREDICTIONS) at x_vp -> the flow velocity eps_hat - x0_hat (module docstring)."""
    alpha, sigma = vp_coefficients(t_B, x_vp)
    if kind == "epsilon":
        eps, x0 = prediction, (x_vp - sigma * prediction) / alpha
    elif kind == "v":
        eps, x0 = sigma * x_vp + alpha * prediction, alpha * x_vp - sigma * prediction
    elif kind == "x0":
        eps, x0 = (x_vp - alpha * prediction) / sigma, prediction
    else:
        raise ValueError(f"VP prediction {kind!r}: expected one of {', '.join(PREDICTIONS)}")
    return eps - x0


def prediction_weight(t_B: torch.Tensor, kind: str) -> torch.Tensor:
    """w(t) with |prediction error|^2 = w(t) |velocity error|^2 at flow time t (B,): the bridge is affine in the
    prediction, dF = (alpha + sigma) dv = deps / (1 - t) = -dx0 / t (flow_velocity; alpha + sigma = 1 / n_t), so
    w = n_t^2 for v, (1 - t)^2 for epsilon, t^2 for x0. A VP network's own MSE (DDPM's L_simple) is w times the
    flow-matching one."""
    if kind == "epsilon":
        return (1 - t_B) ** 2
    if kind == "v":
        return (1 - t_B) ** 2 + t_B ** 2
    if kind == "x0":
        return t_B ** 2
    raise ValueError(f"VP prediction {kind!r}: expected one of {', '.join(PREDICTIONS)}")


def vp_input(x_t: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    """x_vp = (alpha + sigma) x_t = x_t / sqrt((1 - t)^2 + t^2)."""
    return x_t / expand_t(torch.sqrt((1 - t_B) ** 2 + t_B ** 2), x_t)


class BridgedVP(torch.nn.Module):
    """A VP network `vp_net(x_vp, s, cond) -> prediction` seen as a flow network `(x_t, t, cond) -> velocity`."""

    def __init__(self, vp_net: torch.nn.Module, schedule: VPSchedule, prediction: str):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"VP prediction {prediction!r}: expected one of {', '.join(PREDICTIONS)}")
        self.vp_net, self.schedule, self.prediction = vp_net, schedule, prediction

    def forward(self, x_t: torch.Tensor, t_B: torch.Tensor, cond=None, **kw) -> torch.Tensor:
        x_vp = vp_input(x_t, t_B)
        out = self.vp_net(x_vp, self.schedule.timestep(t_B), cond, **kw)
        return flow_velocity(out, x_vp, t_B, self.prediction)

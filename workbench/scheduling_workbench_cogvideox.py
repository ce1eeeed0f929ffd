"""The adapter scheduler of an exported CogVideoX pipeline (see workbench/export_diffusers.py).

Copied verbatim into the pipeline's scheduler/ folder and loaded by diffusers itself
(`CogVideoXImageToVideoPipeline.from_pretrained(DIR, trust_remote_code=True)`): it imports only torch and diffusers.
No stock scheduler steps the workbench's samplers in that pipeline: it multiplies its first latents by
`init_noise_sigma` and feeds the transformer `scale_model_input(latents, t)`, which diffusers' flow-matching schedulers
lack, and CogVideoX's own schedulers step DDIM / DPM on their integer grid. Not being a CogVideoXDPMScheduler, this
one gets the pipeline's plain call `step(noise_pred, t, latents, generator=generator)` after classifier-free guidance
on the raw outputs (the same as the workbench's guidance on velocities: the bridge is affine in the output).

The latents it holds are the workbench's flow state x_t (t = 1 noise, t = 0 data), on the grid
shift(linspace(1, 0, N + 1)) (workbench `sampling.schedule`); at each t the transformer is given
  path "flow": timestep 1000 t and x_t; its output is the velocity F (prediction "x0": F = (x_t - x0) / max(t, t_min)).
  path "vp" (a diffusion network, workbench/vp.py): the VP timestep s whose log-SNR is 2 log((1 - t) / t), linear in s
      between the schedule's timesteps, and x_vp = x_t / sqrt((1 - t)^2 + t^2); its epsilon, v or x0 becomes
      F = eps_hat - x0_hat. Beyond the schedule's ends, s and the coefficients are those of the end (x_vp: the true
      t's).
and the state steps by the sampler: "euler" x + (t' - t) F; "consistency" x0 = x - t F, re-noised to t' with fresh
noise drawn from the pipeline's generator.
"""
import math

import torch
from diffusers import CogVideoXDDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim_cogvideox import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class WorkbenchCogVideoXScheduler(CogVideoXDDIMScheduler):
    """The workbench's samplers in CogVideoXImageToVideoPipeline (module docstring). The beta keys are
    CogVideoXDDIMScheduler's; `alphas_cumprod_floor` keeps a zero terminal SNR finite, as the workbench does."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", rescale_betas_zero_snr: bool = True,
                 snr_shift_scale: float = 1.0, alphas_cumprod_floor: float = 2.0 ** -24, path: str = "vp",
                 prediction: str = "v", sampler: str = "euler", shift: float = 1.0, t_min: float = 0.05):
        predictions = {"vp": ("epsilon", "v", "x0"), "flow": ("velocity", "x0")}
        if path not in predictions or prediction not in predictions[path] or sampler not in ("euler", "consistency"):
            raise ValueError(f"path must be vp (prediction epsilon, v or x0) or flow (velocity or x0), sampler euler "
                             f"or consistency; got {path}, {prediction}, {sampler}")
        super().__init__(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, rescale_betas_zero_snr=rescale_betas_zero_snr,
                         snr_shift_scale=snr_shift_scale)
        a = self.alphas_cumprod.double().clone()
        a[-1] = a[-1].clamp(min=alphas_cumprod_floor)
        self.log_snr = torch.log(a) - torch.log1p(-a)                     # (N,) falling
        self.t_range = tuple(1 / (1 + math.exp(float(lam) / 2)) for lam in (self.log_snr[0], self.log_snr[-1]))
        self.flow_times = None

    def set_timesteps(self, num_inference_steps: int, device=None):
        t = torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float64)
        self.flow_times = (self.config.shift * t / (1 + (self.config.shift - 1) * t)).float()
        self.num_inference_steps, self._index = num_inference_steps, 0
        self.timesteps = self._net_timestep(self.flow_times[:-1]).to(device)

    def _vp_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(*self.t_range)

    def _net_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """1000 t, or the fractional VP timestep s at flow time t."""
        if self.config.path == "flow":
            return 1000.0 * t
        lam, grid = 2 * (torch.log1p(-self._vp_time(t).double()) - torch.log(self._vp_time(t).double())), self.log_snr
        k = torch.searchsorted(-grid, -lam).clamp(1, len(grid) - 1)      # grid[k-1] >= lam >= grid[k]
        return (k - 1 + (grid[k - 1] - lam) / (grid[k - 1] - grid[k])).float()

    def _norm(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((1 - t) ** 2 + t ** 2)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """x_t, or x_vp = x_t / sqrt((1 - t)^2 + t^2) on the VP path."""
        if self.config.path == "flow":
            return sample
        return sample / self._norm(self.flow_times[self._index]).to(sample.device, sample.dtype)

    def _velocity(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kind = self.config.prediction
        if self.config.path == "flow":
            return out if kind == "velocity" else (x - out) / t.clamp_min(self.config.t_min)
        x_vp, tc = x / self._norm(t), self._vp_time(t)
        alpha, sigma = (1 - tc) / self._norm(tc), tc / self._norm(tc)
        if kind == "epsilon":
            eps, x0 = out, (x_vp - sigma * out) / alpha
        elif kind == "v":
            eps, x0 = sigma * x_vp + alpha * out, alpha * x_vp - sigma * out
        else:
            eps, x0 = (x_vp - alpha * out) / sigma, out
        return eps - x0

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        if self.flow_times is None or self._index >= self.num_inference_steps:
            raise ValueError("step called beyond the schedule: call set_timesteps first")
        t, t_next = self.flow_times[self._index].to(sample.device), self.flow_times[self._index + 1].to(sample.device)
        x = sample.float()
        v = self._velocity(model_output.float(), x, t)
        if self.config.sampler == "euler":
            prev = x + (t_next - t) * v
        else:
            x0 = x - t * v
            prev = x0
            if t_next > 0:
                noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                prev = (1 - t_next) * x0 + t_next * noise
        self._index += 1
        prev = prev.to(model_output.dtype)
        return DDIMSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

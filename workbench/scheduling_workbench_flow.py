"""The adapter scheduler, for students no stock diffusers scheduler steps exactly (see workbench/export_diffusers.py).

Copied verbatim into an exported pipeline's scheduler/ folder and loaded by diffusers itself
(`WanImageToVideoPipeline.from_pretrained(DIR, trust_remote_code=True)`): it imports only torch and diffusers.
Time runs from t = 1 (noise) to t = 0 (data); the grid is FlowMapEulerDiscreteScheduler's, shift(linspace(1, 0, N+1)),
which is the workbench's `sampling.schedule(N, shift)`.
"""
from diffusers import FlowMapEulerDiscreteScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_flow_map_euler_discrete import FlowMapEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class WorkbenchFlowScheduler(FlowMapEulerDiscreteScheduler):
    """The workbench's samplers on FlowMapEuler's grid: 'euler' (x + (t' - t) F) or 'consistency' (x0 = x - t F,
    re-noised to t' with fresh noise, Song et al. 2023 Alg. 1); with prediction 'x0' the transformer's output is
    x0_hat and F = (x - x0_hat) / max(t, t_min) (workbench.flow.velocity_from_x0)."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, sampler: str = "euler",
                 prediction: str = "velocity", t_min: float = 0.05):
        if sampler not in ("euler", "consistency") or prediction not in ("velocity", "x0"):
            raise ValueError(f"sampler must be euler or consistency, prediction velocity or x0; got {sampler}, "
                             f"{prediction}")
        super().__init__(num_train_timesteps=num_train_timesteps, shift=shift)

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        i = self.index_for_timestep(timestep)
        if i is None:
            raise ValueError(f"timestep {float(timestep)} is not on the schedule set by set_timesteps")
        t, t_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        x, out = sample.float(), model_output.float()
        v = out if self.config.prediction == "velocity" else (x - out) / max(t, self.config.t_min)
        if self.config.sampler == "euler":
            prev = x + (t_next - t) * v
        else:
            x0 = x - t * v
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            prev = (1 - t_next) * x0 + t_next * noise
        self._step_index = i + 1
        prev = prev.to(model_output.dtype)
        return FlowMapEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

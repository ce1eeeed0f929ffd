"""The VP -> flow bridge (issue 39, workbench/vp.py): on Gaussian data, where E[x0 | x] and E[eps | x] are known in
closed form, the bridged velocity of the exact epsilon, v and x0 predictors is the exact flow velocity at every t
the schedule reaches; the schedule's ends and a non-monotone schedule are refused."""
import pytest
import torch
from diffusers import DDPMScheduler

from workbench.vp import PREDICTIONS, BridgedVP, VPSchedule, log_snr_of_flow_time

MU, S0 = 0.7, 0.4                                  # data: x0 ~ N(MU, S0^2) in every dimension


def schedule(beta_schedule="scaled_linear", n=1000) -> VPSchedule:
    return VPSchedule(DDPMScheduler(num_train_timesteps=n, beta_schedule=beta_schedule, beta_start=0.00085,
                                    beta_end=0.012).alphas_cumprod.double())


class ExactVP(torch.nn.Module):
    """The exact posterior-mean predictor of Gaussian data at VP timestep s (fractional: lambda interpolated in s)."""

    def __init__(self, sched: VPSchedule, kind: str):
        super().__init__()
        self.grid, self.kind = sched.log_snr, kind

    def forward(self, x, s, cond=None):
        k = s.floor().long().clamp(max=len(self.grid) - 2)
        lam = torch.lerp(self.grid[k], self.grid[k + 1], (s - k).double())
        alpha, sigma = (torch.sigmoid(lam).sqrt().reshape(-1, 1), torch.sigmoid(-lam).sqrt().reshape(-1, 1))
        var = alpha ** 2 * S0 ** 2 + sigma ** 2
        x0 = MU + alpha * S0 ** 2 / var * (x - alpha * MU)
        eps = sigma / var * (x - alpha * MU)
        return {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[self.kind]


def exact_flow_velocity(x_t, t):
    """E[eps - x0 | x_t] for x_t = (1 - t) x0 + t eps."""
    t = t.reshape(-1, 1)
    var = (1 - t) ** 2 * S0 ** 2 + t ** 2
    x0 = MU + (1 - t) * S0 ** 2 / var * (x_t - (1 - t) * MU)
    eps = t / var * (x_t - (1 - t) * MU)
    return eps - x0


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_the_bridged_exact_predictor_is_the_exact_flow_velocity(kind, beta_schedule):
    sched = schedule(beta_schedule)
    lo, hi = sched.t_range
    t = torch.cat([torch.linspace(lo, hi, 401, dtype=torch.float64), torch.tensor([lo, hi], dtype=torch.float64)])
    x_t = torch.randn(len(t), 8, dtype=torch.float64)
    v = BridgedVP(ExactVP(sched, kind), sched, kind)(x_t, t)
    torch.testing.assert_close(v, exact_flow_velocity(x_t, t), rtol=1e-9, atol=1e-9)


def test_the_timestep_lands_on_the_schedule_where_it_should():
    sched = schedule()
    lam = sched.log_snr
    t_at = lambda k: 1 / (1 + torch.exp(lam[k] / 2))   # noqa: E731  the flow time of VP timestep k
    ks = torch.tensor([0, 1, 250, 999])
    torch.testing.assert_close(sched.timestep(t_at(ks)), ks.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(log_snr_of_flow_time(t_at(ks)), lam[ks], rtol=1e-9, atol=1e-9)
    mid = sched.timestep((t_at(torch.tensor([10])) + t_at(torch.tensor([11]))) / 2)
    assert 10 < float(mid) < 11


def test_flow_times_beyond_the_schedule_are_refused():
    sched = schedule()
    lo, hi = sched.t_range
    assert 0 < lo < 0.05 and 0.9 < hi < 0.95   # SD's / CogVideoX's betas end at alphas_cumprod 0.0047: t 0.936
    for t in (0.0, lo / 2, (1 + hi) / 2, 1.0):
        with pytest.raises(ValueError, match="outside the VP schedule's range"):
            sched.timestep(torch.tensor([t], dtype=torch.float64))


@pytest.mark.parametrize("bad, match", [(torch.tensor([0.9, 0.5, 0.6, 0.1]), "not strictly decreasing at timestep 2"),
                                        (torch.tensor([1.0, 0.5]), "strictly inside"),
                                        (torch.tensor([0.5]), "at least 2")])
def test_a_schedule_that_is_not_vp_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        VPSchedule(bad)


def test_a_scheduler_config_gives_its_schedule():
    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
              "prediction_type": "v_prediction"}
    torch.testing.assert_close(VPSchedule.from_scheduler_config(config).alphas_cumprod,
                               DDPMScheduler.from_config(config).alphas_cumprod)
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        BridgedVP(torch.nn.Identity(), schedule(), "flow")

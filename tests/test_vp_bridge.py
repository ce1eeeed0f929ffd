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
        return {"epsilon": eps, "v": alpha * eps - sigma * x0, "x0": x0}[self.kind]


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
    with pytest.raises(ValueError, match="VP prediction 'flow'"):
        BridgedVP(torch.nn.Identity(), schedule(), "flow")


# -- the backbone: model.vp_schedule makes a FlowNet a bridged diffusion network ------------------------------------

def scheduler_file(tmp_path, prediction="epsilon"):
    import json
    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": prediction}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_a_vp_flownet_is_its_transformer_bridged(kind, tmp_path):
    from workbench.methods import load_config
    from workbench.models import build_backbone
    from workbench.vp import flow_velocity, vp_input
    cfg = load_config("experiments/micro/teacher.yaml", [f"model.vp_schedule={scheduler_file(tmp_path)}",
                                                          f"model.prediction={kind}"])
    net, encoders = build_backbone(cfg.model)
    from workbench.generate import test_batch
    x0, cond = encoders.prepare(test_batch(cfg, 2)["video"], ["a", "b"])
    lo, hi = net.vp.t_range
    t = torch.tensor([0.3, 0.8])
    x_t = torch.randn_like(x0)
    with torch.no_grad():
        inp, text, image = net.wan_inputs(vp_input(x_t, t), cond)
        raw = net.transformer(inp, net.vp.timestep(t), text, return_dict=False)[0]
        torch.testing.assert_close(net(x_t, t, cond), flow_velocity(raw, vp_input(x_t, t), t, kind))
        v_end = net(x_t, torch.tensor([1.0, hi]), cond)          # beyond the schedule: asked at its last timestep
        assert torch.isfinite(v_end).all()
        torch.testing.assert_close(net.net_timestep(torch.tensor([1.0])), net.net_timestep(torch.tensor([hi])))


@pytest.mark.parametrize("overrides, match", [
    (["model.prediction=epsilon"], "epsilon is a VP prediction: set model.vp_schedule"),
    (["model.vp_schedule=x.json", "model.prediction=velocity"], "a VP network .* predicts epsilon, v or x0, not velocity")])
def test_a_prediction_that_does_not_fit_the_path_is_refused_at_load(overrides, match):
    from workbench.config import ConfigError
    from workbench.methods import load_config
    with pytest.raises(ConfigError, match=f"model.prediction: {match}"):
        load_config("experiments/micro/teacher.yaml", overrides)


def test_weights_of_a_flow_network_are_refused_for_a_vp_one(tmp_path):
    from workbench.methods import load_config
    from workbench.models import build_backbone
    from workbench.train import train
    run = train(load_config("experiments/micro/teacher.yaml", ["data.train_size=4", "train.steps=1",
                                                               "train.ckpt_every=1", "train.sample_num=1"]),
                tmp_path / "flow", progress=False)
    weights = next((run / "checkpoints").glob("step-*")) / "model.safetensors"
    cfg = load_config("experiments/micro/teacher.yaml", [f"model.vp_schedule={scheduler_file(tmp_path)}",
                                                          "model.prediction=x0", f"model.weights={weights}"])
    with pytest.raises(ValueError, match="trained with model.prediction=x0 on a flow path .* but this config "
                                         "has model.prediction=x0 on a VP path"):
        build_backbone(cfg.model)

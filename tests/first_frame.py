"""The image-to-video conditioning must reach every network a method calls: a method built at toy (micro) or
tiny-Wan scale, two conditionings that differ only in the first frame, and the check that each network sees it."""
import torch

from workbench.methods import load_config
from workbench.methods import build_method
from workbench.models import build_backbone

MICRO = "experiments/micro/teacher.yaml"


def method_and_two_first_frames(sets: list[str], wan: bool, tmp_path):
    """(method, student net, x_t, t, cond_a, cond_b): cond_b's first frame is cond_a's negated."""
    if wan:
        from workbench.models.tiny_wan import save_tiny_wan
        cfg = load_config(None, [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()] + sets)
        shape = (1, 3, 5, 32, 32)
    else:
        cfg = load_config(MICRO, sets)
        shape = (1, 3, 4, 16, 16)
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    clip = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    other = clip.clone()
    other[:, :, 0] = -other[:, :, 0]                                          # another first frame
    x0, cond_a = encoders.prepare(clip, ["a red ball"])
    _, cond_b = encoders.prepare(other, ["a red ball"])
    return method, net, torch.randn_like(x0), torch.tensor([0.7]), cond_a, cond_b


def assert_every_network_sees_the_first_frame(nets: dict, x_t, t, cond_a, cond_b) -> None:
    """Each network's output (a None entry is skipped) differs between the two first frames."""
    with torch.no_grad():
        for label, f in nets.items():
            if f is not None:
                assert not torch.allclose(f(x_t, t, cond_a), f(x_t, t, cond_b)), label

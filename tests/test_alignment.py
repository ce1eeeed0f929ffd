"""Distribution alignment (Eq. 10) and trajectory alignment (Eq. 11, LoRA), on tiny random networks."""
from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import pytest
import torch

from workbench.data import build_dataset, collate
from workbench.methods import TrainStep, build_method, load_config
from workbench.train import steps_on_batch
from workbench.methods.adversarial import Adversarial
from workbench.methods.dpo import FlowDPO, dpo_loss
from workbench.methods.parts import hinge_discriminator, hinge_generator
from workbench.models import build_backbone
from workbench.models.lora import add_lora, load_lora, save_lora


ADAM = ["train.lr=1e-3", "train.warmup_steps=0", "train.schedule=constant", "train.grad_clip=0",
        "train.betas=[0.9,0.999]", "train.weight_decay=0.01"]   # torch's AdamW defaults, constant


def _steps(method, batch, steps: int):
    """The training loop's update of every role due, `steps` times on a fixed batch."""
    return steps_on_batch(method, method.cfg.train, batch, steps, lambda step: torch.Generator().manual_seed(step))


def test_hinge_losses_on_known_logits():
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([[0.0, 3.0]])]
    fake = [torch.tensor([-2.0, 0.5, 1.0]), torch.tensor([[-0.5, 0.0]])]
    # D: mean(relu(1 - r)) + mean(relu(1 + f)) per head, summed over heads
    d = (0 + 0.5 + 2) / 3 + (0 + 1.5 + 2) / 3 + (1 + 0) / 2 + (0.5 + 1) / 2
    g = (3 + 0.5 + 0) / 3 + (1.5 + 1) / 2                                     # mean(relu(1 - f))
    assert hinge_discriminator(real, fake).item() == pytest.approx(d)
    assert hinge_generator(fake).item() == pytest.approx(g)


def test_da_trains_heads_and_student_but_never_the_feature_net(dino):
    cfg = load_config("experiments/micro/da.yaml", [f"adversarial.feature_net={dino}", "adversarial.warmup=1",
                                                        "adversarial.layers=[1,2]", *ADAM])
    torch.manual_seed(0)
    net, cond = build_backbone(cfg.model)
    method = build_method(cfg, net, cond)
    assert isinstance(method, Adversarial)
    term = method.adversarial
    feats, disc, student = (copy.deepcopy(m.state_dict()) for m in (term.features, term.disc, net))
    batch = collate([build_dataset(cfg.data, "train")[i] for i in range(4)])
    logs = _steps(method, batch, 3)
    assert "loss_d" not in logs[0] and "loss_d" in logs[1]                       # N_warmup = 1 distillation step
    assert all(p.grad is None and not p.requires_grad for p in term.features.parameters())
    assert all(torch.equal(v, term.features.state_dict()[k]) for k, v in feats.items())
    assert any(not torch.equal(v, term.disc.state_dict()[k]) for k, v in disc.items())
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in student.items())
    roles = method.roles()
    assert list(roles) == ["model", "disc"] and roles["model"].export and not roles["disc"].due(0) and roles["disc"].due(1)


def test_motion_head_sees_only_the_patches_that_change(dino):
    """Motion heads (adversarial.motion_layers) read a patch's layer-0 token change between frames: a still clip
    gives the same logits for every pair of frames, and a change in one patch moves only the logits within the
    head's reach."""
    cfg = load_config("experiments/micro/da.yaml", [f"adversarial.feature_net={dino}", "adversarial.layers=[2]",
                                                        "adversarial.motion_layers=[0]"])
    torch.manual_seed(0)
    net, cond = build_backbone(cfg.model)
    term = build_method(cfg, net, cond).adversarial
    term.disc.eval()                                                              # spectral norm: no power step
    size, patch = term.features.config.image_size, term.features.config.patch_size
    still = torch.rand(1, 3, 1, size, size).mul(2).sub(1).repeat(1, 1, 3, 1, 1)   # (B, 3, T, H, W), T = 3
    moved = still.clone()
    moved[:, :, 2, :patch, :patch] = 1.0                                          # frame 2, top-left patch only
    with torch.no_grad():
        motion_still, motion_moved = (term.disc(term.tokens(v), 1)[-1] for v in (still, moved))
    assert motion_still.shape == (2, (size // patch) ** 2)                        # (B*(T-1), L)
    assert torch.allclose(motion_still[0], motion_still[1], atol=1e-6)
    assert torch.allclose(motion_moved[0], motion_still[0], atol=1e-6)                       # frames 0 -> 1: still
    changed = (motion_moved[1] - motion_still[1]).abs() > 1e-6
    assert changed[0] and changed.sum() <= 2                                     # the patch and its kernel-3 reach


def test_dpo_loss_by_hand():
    e_w, e_l, r_w, r_l = (torch.tensor([x]) for x in (0.2, 0.5, 0.25, 0.45))
    inside = -10 / 2 * ((0.2 - 0.25) - (0.5 - 0.45))                          # Eq. (11) with beta = 10: 0.5
    assert dpo_loss(e_w, e_l, r_w, r_l, beta=10).item() == pytest.approx(math.log1p(math.exp(-inside)))


def _preference_batch(cfg, net, cond, n=4):
    """Winners and losers as the pair builder stores them: latents, first frames, captions, frame count."""
    clips = collate([build_dataset(cfg.data, "train")[i] for i in range(n)])
    x0, _ = cond.prepare(clips["video"], clips["caption"])
    g = torch.Generator().manual_seed(3)
    return {"winner": x0, "loser": x0 + 0.3 * torch.randn(x0.shape, generator=g), "first": clips["video"][:, :, 0],
            "caption": clips["caption"], "frames": [clips["video"].shape[2]] * n}


def test_dpo_starts_at_log2_and_changes_only_lora():
    cfg = load_config("experiments/micro/dpo.yaml", ["data.preferences=''", *ADAM])
    torch.manual_seed(0)
    net, cond = build_backbone(cfg.model)
    base = {k.replace(".base_layer", ""): v.clone() for k, v in net.transformer.state_dict().items() if "lora_" not in k}
    method = build_method(cfg, net, cond)
    assert isinstance(method, FlowDPO)
    batch = _preference_batch(cfg, net, cond)
    logs = _steps(method, batch, 4)
    # B = 0 at init: the model is its reference, so the margin is 0 and L_DPO = log 2, Win Diff = 0
    assert logs[0]["loss_dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs[0]["win_diff"] == pytest.approx(0.0, abs=1e-7)
    assert logs[0]["loss_keep"] == 0.0 and logs[-1]["loss_keep"] > 0           # F = F_ref until the LoRA moves
    assert logs[-1]["loss_dpo"] < math.log(2)
    after = {k.replace(".base_layer", ""): v for k, v in net.transformer.state_dict().items()}
    assert all(torch.equal(after[k], v) for k, v in base.items())              # every base weight is untouched
    lora = [k for k in after if "lora_B" in k]
    assert lora and all(p.requires_grad == ("lora_" in n) for n, p in net.transformer.named_parameters())
    assert any(after[k].abs().sum() > 0 for k in lora)                         # the adapter has learned


def _pair_errors(overrides, batch_of=lambda b: b):
    cfg = load_config("experiments/micro/dpo.yaml", ["data.preferences=''", *overrides])
    torch.manual_seed(0)
    net, cond = build_backbone(cfg.model)
    method = build_method(cfg, net, cond)
    batch = batch_of(_preference_batch(cfg, net, cond))
    step = TrainStep(0, torch.Generator().manual_seed(5), {"model": net}, frozenset({"model"}))
    with torch.no_grad():
        return method.pair_errors(batch, step)


def test_dpo_x0_errors_are_t_squared_velocity_errors():
    v, x0 = _pair_errors(["dpo.error=velocity"]), _pair_errors(["dpo.error=x0"])
    t = v[-1]
    assert torch.equal(x0[-1], t)                                               # same t and noise
    for e_v, e_x0 in zip(v[:4], x0[:4]):                                       # ||x0 - x0_hat||^2 = t^2 ||v - F||^2
        torch.testing.assert_close(e_x0, t.pow(2) * e_v, rtol=1e-5, atol=1e-9)


def test_dpo_condition_frame_gives_both_clips_the_given_frame():
    def given_frame(batch):                                                     # the same, written into the data
        first = batch["first"][:, :, None]                                      # toy latents are pixels
        return {**batch, **{k: torch.cat([first, batch[k][:, :, 1:]], 2) for k in ("winner", "loser")}}

    def drift(batch):                                                           # a frame 0 the condition does not have
        return {**batch, **{k: batch[k] + torch.nn.functional.pad(torch.ones_like(batch[k][:, :, :1]),
                                                                  (0, 0, 0, 0, 0, batch[k].shape[2] - 1))
                            for k in ("winner", "loser")}}

    switched = _pair_errors(["dpo.condition_frame=true"], drift)
    by_hand = _pair_errors(["dpo.condition_frame=false"], given_frame)
    plain = _pair_errors(["dpo.condition_frame=false"], drift)
    for a, b, c in zip(switched, by_hand, plain):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(switched[0], plain[0])


def test_dpo_region_difference_weighs_only_where_the_pair_differs():
    from workbench.methods.dpo import difference_weight
    x_w = torch.zeros(2, 1, 2, 1, 2)
    x_l = torch.tensor([[0.0, 2.0, 0.0, 2.0], [0.0, 0.0, 0.0, -1.0]]).view(2, 1, 2, 1, 2)
    torch.testing.assert_close(difference_weight(x_w, x_l).flatten(1),        # |x_w - x_l| / its clip mean
                               torch.tensor([[0.0, 2.0, 0.0, 2.0], [0.0, 0.0, 0.0, 4.0]]))
    everywhere, where = _pair_errors(["dpo.region=all"]), _pair_errors(["dpo.region=difference"])
    torch.testing.assert_close(where.reflow_w, everywhere.err_w)               # reflow (and Win Diff) see every element
    torch.testing.assert_close(where.reflow_ref_w, everywhere.ref_w)
    assert torch.equal(everywhere.err_w, everywhere.reflow_w) and not torch.allclose(where.err_w, everywhere.err_w)


def test_dpo_first_frame_term_is_x0_hats_error_on_the_given_frame(monkeypatch):
    import workbench.methods.dpo as dpo
    x0_hats = []
    real_denoise = dpo.denoise
    monkeypatch.setattr(dpo, "denoise", lambda x, F, t: x0_hats.append(real_denoise(x, F, t)) or x0_hats[-1])

    def run(lambda_first: float, steps: int):
        cfg = load_config("experiments/micro/dpo.yaml", ["data.preferences=''", f"dpo.lambda_first={lambda_first}", *ADAM,
                                                         "train.lr=1e-2"])           # a LoRA starts at B = 0
        torch.manual_seed(0)
        net, cond = build_backbone(cfg.model)
        method = build_method(cfg, net, cond)
        batch = _preference_batch(cfg, net, cond)
        return batch, _steps(method, batch, steps)

    batch, logs = run(0.0, 1)
    given_B_C_1_H_W = batch["first"][:, :, None]                               # toy latents are pixels
    x0_hat_2B = x0_hats[-1].detach()                                            # winners, then losers
    expected = (x0_hat_2B[:, :, :1] - given_B_C_1_H_W.repeat(2, 1, 1, 1, 1)).pow(2).mean().item()
    assert logs[0]["loss_first"] == pytest.approx(expected, rel=1e-5) and expected > 0
    off = run(0.0, 8)[1][-1]["loss_first"]
    on = run(1e3, 8)[1][-1]["loss_first"]                                       # same pairs, times and noise
    assert on < 0.6 * off                                                # the term pulls frame 0 to the given frame


def test_da_reads_x0_hat_at_its_own_large_times(dino, monkeypatch):
    import workbench.methods.adversarial as adversarial
    seen = []
    real_denoise = adversarial.denoise
    monkeypatch.setattr(adversarial, "denoise", lambda x, F, t: seen.append(t.clone()) or real_denoise(x, F, t))
    cfg = load_config("experiments/micro/da.yaml", [f"adversarial.feature_net={dino}", "adversarial.warmup=0",
                                                        "adversarial.layers=[1,2]", "adversarial.t_min=0.7", *ADAM])
    torch.manual_seed(0)
    net, cond = build_backbone(cfg.model)
    method = build_method(cfg, net, cond)
    batch = collate([build_dataset(cfg.data, "train")[i] for i in range(8)])
    _steps(method, batch, 2)
    assert len(seen) == 2 and all(bool((t >= 0.7).all() and (t <= 1).all()) for t in seen)


def test_da_first_frame_term_is_x0_hats_error_on_the_given_frame(dino, monkeypatch):
    import workbench.methods.adversarial as adversarial
    x0_hats = []
    real_denoise = adversarial.denoise
    monkeypatch.setattr(adversarial, "denoise", lambda x, F, t: x0_hats.append(real_denoise(x, F, t)) or x0_hats[-1])

    def run(lambda_first: float, steps: int):
        cfg = load_config("experiments/micro/da.yaml", [f"adversarial.feature_net={dino}", "adversarial.warmup=0",
                                                            "adversarial.layers=[1,2]", "adversarial.t_min=0.5",
                                                            f"adversarial.lambda_first={lambda_first}", *ADAM])
        torch.manual_seed(0)
        net, cond = build_backbone(cfg.model)
        method = build_method(cfg, net, cond)
        batch = collate([build_dataset(cfg.data, "train")[i] for i in range(4)])
        return method, batch, _steps(method, batch, steps)

    method, batch, logs = run(0.0, 1)
    with torch.no_grad():
        _, cond = method.encoders.prepare(batch["video"], batch["caption"])
    given_B_C_1_H_W = cond.first_BCTHW[:, :, :1]
    expected = (x0_hats[-1][:, :, :1].detach() - given_B_C_1_H_W).pow(2).mean().item()
    assert logs[0]["loss_first"] == pytest.approx(expected, rel=1e-5) and expected > 0
    off = run(0.0, 6)[2][-1]["loss_first"]
    on = run(1e4, 6)[2][-1]["loss_first"]                               # same batches, times and noise
    assert on < 0.5 * off                                                # the term pulls frame 0 to the given frame


def test_da_frame_subset_reads_a_prefix_of_fake_and_real_clips(dino):
    """adversarial.latent_frames: D reads the first n latent frames decoded, against as many real frames; a causal
    VAE's decode of a latent prefix is exactly the full decode's first frames (tiny Wan VAE: workbench/models/tiny_wan.py)."""
    from diffusers import AutoencoderKLWan
    from workbench.models import tiny_wan
    from workbench.models.codec import WanVAECodec
    cfg = load_config("experiments/micro/da.yaml", [f"adversarial.feature_net={dino}", "adversarial.warmup=0",
                                                        "adversarial.layers=[1,2]", "adversarial.latent_frames=2", *ADAM])
    torch.manual_seed(0)
    net, cond = build_backbone(cfg.model)
    method = build_method(cfg, net, cond)
    seen = []
    real_tokens = method.adversarial.tokens
    method.adversarial.tokens = lambda video: seen.append(video.shape) or real_tokens(video)
    batch = collate([build_dataset(cfg.data, "train")[i] for i in range(2)])
    _steps(method, batch, 1)
    assert batch["video"].shape[2] > 2 and seen and all(shape[2] == 2 for shape in seen)   # fake and real: 2 frames
    with tempfile.TemporaryDirectory() as d:
        codec = WanVAECodec(AutoencoderKLWan.from_pretrained(tiny_wan.save_vae(Path(d) / "vae")))
        z = torch.randn(1, tiny_wan.Z_DIM, 3, 4, 4)
        with torch.no_grad():
            full, prefix = codec.decode(z), codec.decode(z[:, :, :2])
    assert prefix.shape[2] == 5 and torch.equal(full[:, :, :5], prefix)


def test_lora_round_trips_exactly_in_diffusers_format(tmp_path):
    cfg = load_config("experiments/micro/dpo.yaml", ["model.lora.rank=0"])
    torch.manual_seed(0)
    net, _ = build_backbone(cfg.model)
    fresh = copy.deepcopy(net.transformer)
    add_lora(net.transformer, 4, 8.0, cfg.model.lora.targets)
    with torch.no_grad():
        for n, p in net.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_()                                                     # B = 0 would round-trip trivially
    path = save_lora(net.transformer, tmp_path)
    assert path.name == "pytorch_lora_weights.safetensors"
    load_lora(fresh, tmp_path)
    a, b = net.transformer.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.peft_config["default"].lora_alpha == 8.0 and fresh.peft_config["default"].r == 4
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        load_lora(fresh, tmp_path / "nowhere")


def test_wan_scale_da_and_ta_steps(tmp_path, dino):
    """The 1.3B code path at tiny size: VAE-decoded x0_hat through DINOv2 heads; DPO with LoRA on Wan."""
    from workbench.models.tiny_wan import save_tiny_wan
    model = [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()]
    clip = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    captions = ["a red ball moving left", "a blue cat"]

    cfg = load_config(None, [*model, "train.method=adversarial", "adversarial.warmup=0",
                             f"adversarial.feature_net={dino}", "adversarial.layers=[1,2]",
                             "distill.tangent_warmup=0", *ADAM])
    net, cond = build_backbone(cfg.model)
    method = build_method(cfg, net, cond)
    logs = _steps(method, {"video": clip, "caption": captions}, 1)
    assert all(math.isfinite(v) for v in logs[0].values()) and "logit_fake" in logs[0]
    assert all(p.grad is not None for p in method.adversarial.disc.parameters())

    cfg = load_config(None, [*model, "train.method=dpo", "model.lora.rank=2", *ADAM])
    net, cond = build_backbone(cfg.model)
    method = build_method(cfg, net, cond)
    x0, _ = cond.prepare(clip, captions)
    batch = {"winner": x0, "loser": torch.randn_like(x0), "first": clip[:, :, 0], "caption": captions, "frames": [5, 5]}
    logs = _steps(method, batch, 2)
    assert logs[0]["loss_dpo"] == pytest.approx(math.log(2), abs=1e-6) and math.isfinite(logs[1]["loss"])

"""The direction-word probe: zero when the text path is cut, positive when text reaches the velocity."""
import torch

from workbench.methods import load_config
from workbench.eval.probes import direction_sensitivity
from workbench.generate import Model
from workbench.generate import test_batch as make_test_batch
from workbench.models import build_backbone


def test_direction_sensitivity_sees_only_the_text_path():
    cfg = load_config("experiments/micro/teacher.yaml")
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    batch = make_test_batch(cfg, 2)
    res = direction_sensitivity(net.eval(), encoders, batch, ts=(0.9, 0.5))
    assert set(res) == {0.9, 0.5}
    assert all(r["left_vs_right"] > 0 and r["caption_vs_empty"] > 0 for r in res.values())
    for block in net.transformer.blocks:  # cut cross-attention: the caption can no longer change F
        torch.nn.init.zeros_(block.attn2.to_out[0].weight)
        torch.nn.init.zeros_(block.attn2.to_out[0].bias)
    res = direction_sensitivity(net, encoders, batch, ts=(0.9,))
    assert res[0.9] == {"left_vs_right": 0.0, "caption_vs_empty": 0.0}


def test_solid_by_frame_on_real_and_on_emptied_clips():
    from dataclasses import asdict

    from workbench.data.synthetic import ToySpec, render_clip
    from workbench.eval.oracle import solid_by_frame
    video, _, truth = render_clip(7, ToySpec())
    truth = [asdict(o) for o in truth]
    assert solid_by_frame(video, truth).tolist() == [1.0] * (video.shape[0] - 1)
    emptied = video.copy()
    emptied[1:] = emptied[1:].min()  # frames 1.. without any object
    assert solid_by_frame(emptied, truth).tolist() == [0.0] * (video.shape[0] - 1)


def test_solid_per_frame_covers_every_generated_frame():
    from workbench.eval.probes import solid_per_frame
    cfg = load_config("experiments/micro/teacher.yaml")
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    batch = make_test_batch(cfg, 2)
    solid = solid_per_frame(Model(net.eval(), encoders, cfg), batch, steps=1, seeds=(0, 1))
    assert len(solid) == batch["video"].shape[2] - 1 and all(0.0 <= s <= 1.0 for s in solid)


def test_follows_word_scores_each_real_clip_against_its_own_and_the_opposite_word():
    from dataclasses import asdict

    from workbench.data.synthetic import ToySpec, render_clip
    from workbench.eval.probes import follows_word
    spec = ToySpec()
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for seed in range(40):
        video, _, truth = render_clip(seed, spec)
        truth = [asdict(o) for o in truth]
        o = truth[0]
        assert follows_word([video], [truth], o["direction"]) == 1.0
        # the opposite word makes the same first move only from a wall on that axis (0 or frame - object size)
        start = o["xy"][0][0 if o["direction"] in ("left", "right") else 1]
        at_wall = start in (0, spec.size - o["size"])
        assert follows_word([video], [truth], opposite[o["direction"]]) == float(at_wall)


def test_direction_following_gives_a_share_per_word():
    from workbench.eval.probes import direction_following
    cfg = load_config("experiments/micro/teacher.yaml")
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    res = direction_following(Model(net.eval(), encoders, cfg), make_test_batch(cfg, 2), steps=1)
    assert set(res) == {"left", "right", "up", "down"} and all(0.0 <= v <= 1.0 for v in res.values())


def test_shipped_teacher_is_right_by_the_ground_truth_at_25_steps_and_worse_at_2():
    """Issue 2's claim about experiments/toy/teacher, on 16 test clips and one noise seed (README: 64 clips, 3 seeds)."""
    from workbench.data.synthetic import to_uint8
    from workbench.eval.oracle import oracle_metrics
    from workbench.eval.probes import sampled_clips
    from workbench.runs import load_model
    model = load_model("experiments/toy/teacher")
    cfg = model.config
    assert cfg.model.prediction == "x0"
    batch = make_test_batch(cfg, 16)
    reals = [to_uint8(v) for v in batch["video"]]
    m = {s: oracle_metrics(sampled_clips(model, batch, s, seed=0), reals, batch["truth"]) for s in (2, 25)}
    assert m[25]["solid"] > 0.95 and m[25]["shape_iou"] > 0.95 and m[25]["count_ok"] > 0.95
    assert m[25]["direction_agree"] > 0.9 and m[25]["path_accel"] < 1.5 and m[25]["first_frame_mae"] < 4
    assert m[2]["solid"] < m[25]["solid"] - 0.05 and m[2]["colour_mass"] < m[25]["colour_mass"] - 0.03

"""Evaluation metrics against known answers: Frechet distance, VBench formulas, PSNR/SSIM, oracle, extractors."""
import math
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage

from workbench.data.synthetic import TEST_SEED_OFFSET, ToySpec, render_clip, to_tensor
from workbench.eval import vbench
from workbench.eval.fidelity import PSNR_CAP, psnr, ssim
from workbench import shipped
from workbench.eval import fvd as fvd_module
from workbench.eval.fvd import I3DExtractor, frechet_distance, fvd, load_extractor
from workbench.eval.oracle import clip_metrics

ROOT = Path(__file__).resolve().parents[1]
TOY_FVD_WEIGHTS = shipped(fvd_module.TOY_FVD_WEIGHTS)
needs_toy_fvd = pytest.mark.skipif(not TOY_FVD_WEIGHTS.is_file(), reason="toy FVD weights not built")


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fd_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    for n in (500, 20):  # 20 videos < 64 dims: singular covariance
        f = rng.normal(size=(n, 64)) * 3 + 1
        assert fvd(f, f) < 1e-6 * np.trace(np.cov(f, rowvar=False))


def test_fd_between_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    # diagonal: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-10)
    # full, non-commuting covariances: the textbook formula with scipy's matrix square root
    s1, s2 = _random_cov(rng, 8), _random_cov(rng, 8)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    # from samples: close to the population value
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    assert fvd(x, y) == pytest.approx(ref, rel=0.02)


def test_fd_is_stable_for_rank_deficient_covariances():
    rng = np.random.default_rng(2)
    low = rng.normal(size=(10, 3)) @ rng.normal(size=(3, 32))  # rank 3 in 32 dims
    d = fvd(low, low + 1.0)
    assert np.isfinite(d) and d == pytest.approx(32.0, rel=1e-6)  # shift by 1 in 32 dims, same covariance


class PixelFeatures(vbench.FrameFeatures):
    """Flattened pixels: a feature net whose answers can be derived by hand."""
    name = "pixels"

    def __call__(self, frames):
        return frames.flatten(1).float()


def _drifting_clip(T=8, H=16):
    """A smooth pattern whose phase drifts a little per frame: nearby frames are the most similar."""
    y, x = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    frames = [torch.sin(0.5 * x + 0.4 * t + 0.2 * y) for t in range(T)]
    return torch.stack(frames)[None, None].expand(1, 3, T, H, H).clone() * 0.8  # (1, 3, T, H, W)


def test_subject_consistency_of_a_static_clip_is_one_and_falls_when_shuffled():
    nets = vbench.VBenchNets(PixelFeatures(), PixelFeatures())
    clip = _drifting_clip()
    static = clip[:, :, :1].expand_as(clip)
    shuffled = clip[:, :, [0, 4, 1, 7, 2, 6, 3, 5]]
    first = clip[:, :, 0]
    s = {k: vbench.vbench_clips(v, first, nets)["subject_consistency"][0]
         for k, v in {"static": static, "clip": clip, "shuffled": shuffled}.items()}
    assert s["static"] == pytest.approx(1.0, abs=1e-6)
    assert s["shuffled"] < s["clip"] < 1.0


def test_i2v_formula():
    # features chosen so each cosine is known: cos(image, f_t) = (1, 0.6, 0); consecutive cos = (0.6, 0.8)
    f = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    image = torch.tensor([[1.0, 0.0]])
    consec = [0.6, 0.8]
    expect = 0.4 * 1.0 + 0.3 * np.mean(consec) + 0.3 * min(consec)
    assert vbench.i2v_consistency(f, image)[0] == pytest.approx(expect)
    assert vbench.consistency(f)[0] == pytest.approx(((0.6 + 0.6) / 2 + (0.8 + 0.0) / 2) / 2)


def test_quality_groups_normalise_weight_and_label_proxies():
    scores = {"subject_consistency": 1.0, "background_consistency": 1.0, "temporal_flickering": 1.0,
              "motion_smoothness_proxy": 0.9975, "dynamic_degree_proxy": 0.0, "aesthetic_quality_proxy": 0.4,
              "imaging_quality": 0.6}
    g = vbench.quality_groups(scores)
    assert g["temporal_quality_proxy"] == pytest.approx(4 / 4.5)  # dynamic degree 0 at weight 0.5
    assert g["frame_quality_proxy"] == pytest.approx(0.5)
    assert set(g) == {"temporal_quality_proxy", "frame_quality_proxy"}


def _toy_clip(seed=TEST_SEED_OFFSET):
    video, _, truth = render_clip(seed, ToySpec())
    return video, [t.__dict__ for t in truth]


def test_motion_proxies_on_static_moving_and_shuffled_clips():
    video, _ = _toy_clip()
    px = torch.from_numpy(video).permute(0, 3, 1, 2)[None].double()  # B, T, C, H, W in [0, 255]
    static = px[:, :1].expand_as(px)
    assert vbench.dynamic_degree_proxy(static)[0] == 0 and vbench.dynamic_degree_proxy(px)[0] == 1
    assert vbench.motion_smoothness_proxy(static)[0] == 1.0
    assert vbench.temporal_flickering(static)[0] == 1.0
    shuffled = px[:, [0, 5, 2, 7, 4, 1, 6, 3]]
    assert vbench.motion_smoothness_proxy(px)[0] > vbench.motion_smoothness_proxy(shuffled)[0]


def test_psnr_of_identical_clips_is_the_cap():
    video, _ = _toy_clip()
    clips = video[None]
    assert psnr(clips, clips)[0] == PSNR_CAP
    off = clips.astype(np.int16) + 1
    assert psnr(np.clip(off, 0, 255), clips)[0] == pytest.approx(10 * np.log10(255 ** 2), abs=0.02)  # MSE ~ 1


def test_ssim_matches_hand_derived_and_reference_values():
    a, b = 100.0, 140.0
    x, y = np.full((1, 2, 16, 16, 3), a), np.full((1, 2, 16, 16, 3), b)
    c1 = (0.01 * 255) ** 2
    assert ssim(x, y)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, (1, 2, 24, 24, 3)).astype(np.float64)
    v = np.clip(u + rng.normal(0, 20, u.shape), 0, 255)
    assert ssim(u, u)[0] == pytest.approx(1.0)

    def reference(p, q):  # scipy Gaussian filter (radius 5), border cropped, as skimage's gaussian_weights SSIM
        g = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731
        mp, mq = g(p), g(q)
        vp, vq, cov = g(p * p) - mp ** 2, g(q * q) - mq ** 2, g(p * q) - mp * mq
        c2 = (0.03 * 255) ** 2
        return (((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2))).mean()

    ref = np.mean([reference(u[0, 1, :, :, c], v[0, 1, :, :, c]) for c in range(3)])
    assert ssim(v, u)[0] == pytest.approx(ref, rel=1e-10)


def test_oracle_sharpness_drops_and_blur_rises_on_a_blurred_clip():
    video, truth = _toy_clip()
    blurred = np.stack([ndimage.gaussian_filter(f.astype(np.float32), (1.2, 1.2, 0)) for f in video])
    blurred = blurred.round().astype(np.uint8)
    assert clip_metrics(video, video, truth)["sharpness"] == pytest.approx(1.0)
    assert clip_metrics(blurred, video, truth)["sharpness"] < 0.5
    px = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2)[None].double()  # noqa: E731
    assert vbench.imaging_quality_proxy(px(blurred))[0] < vbench.imaging_quality_proxy(px(video))[0]


def test_extractor_refuses_a_missing_weight_file(tmp_path):
    missing = tmp_path / "i3d_torchscript.pt"
    with pytest.raises(FileNotFoundError) as e:
        load_extractor(str(missing))
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="toy_fvd"):
        load_extractor(str(tmp_path / "toy_fvd.safetensors"))


def test_cli_names_a_missing_extractor_in_one_line(tmp_path, capsys):
    from workbench.__main__ import main
    missing = tmp_path / "i3d_torchscript.pt"
    assert main(["eval", str(tmp_path), "--out", str(tmp_path / "out"), "--fvd-extractor", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and err.strip().count("\n") == 0


def test_cli_takes_the_test_or_validation_split_only(tmp_path, capsys):
    """Settings are chosen on the validation split; the train split is never a table's."""
    from workbench.__main__ import main
    with pytest.raises(SystemExit) as e:                                    # argparse's own refusal
        main(["eval", str(tmp_path), "--out", str(tmp_path / "out"), "--split", "train"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--split" in err and "'test', 'validation'" in err and err.strip().count("\n") == 0


class FakeI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: reports what it was fed."""

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        B = x.shape[0]
        stats = torch.stack([x.amin(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4))], 1)
        shape = torch.tensor([float(x.shape[2]), float(x.shape[3]), float(x.shape[4]), float(rescale),
                              float(resize)]).expand(B, 5)
        return torch.cat([stats, shape], 1)


def test_i3d_extractor_preprocessing_with_a_stand_in_model(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(FakeI3D()).save(str(path))
    ext = load_extractor(str(path))
    assert isinstance(ext, I3DExtractor) and ext.weight_hash in ext.describe()
    video = torch.rand(2, 3, 16, 24, 32) * 2 - 1
    out = ext(video)
    assert out.shape == (2, 7)
    assert out[0, 0] >= -1 and out[0, 1] <= 1
    assert out[0, 2:].tolist() == [16, 224, 224, 0, 0]  # all frames, 224 x 224, no internal rescale/resize
    with pytest.raises(ValueError, match="16 frames"):
        ext(torch.zeros(1, 3, 8, 24, 24))


def test_dinov2_frame_features_from_a_local_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model
    from workbench.eval.feature_nets import Dinov2FrameFeatures
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=14)).save_pretrained(tmp_path / "dinov2")
    feats = Dinov2FrameFeatures(tmp_path / "dinov2")(torch.rand(3, 3, 24, 24) * 2 - 1)
    assert feats.shape == (3, 32) and torch.isfinite(feats).all()
    with pytest.raises(FileNotFoundError, match="nope"):
        Dinov2FrameFeatures(tmp_path / "nope")


def test_vbench_adapter_is_guarded(tmp_path, monkeypatch):
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "empty"))
    assert not vbench.vbench_available()
    with pytest.raises(RuntimeError, match="vbench"):
        vbench.run_vbench(tmp_path, tmp_path / "out")


def test_methods_and_models_do_not_use_the_fvd_network():
    """The FVD extractor must stay out of training: no method or model may build on it."""
    for folder in ("methods", "models", "train"):
        for f in (ROOT / "workbench" / folder).rglob("*.py"):
            text = f.read_text()
            assert "eval.feature_nets" not in text and "ToyFVDNet" not in text and "toy_fvd" not in text, f


@needs_toy_fvd
def test_shipped_toy_fvd_net_is_small_accurate_and_separates_blur():
    assert TOY_FVD_WEIGHTS.stat().st_size < 5 * 2 ** 20
    info = json.loads((TOY_FVD_WEIGHTS.parent / "info.json").read_text())
    assert min(info[k] for k in ("acc_shape", "acc_colour", "acc_direction")) > 0.9
    ext = load_extractor("toy")
    real = [render_clip(TEST_SEED_OFFSET + i)[0] for i in range(96)]
    a = torch.stack([to_tensor(v) for v in real[:48]])
    b = torch.stack([to_tensor(v) for v in real[48:]])
    blurred = torch.stack([to_tensor(np.stack([ndimage.gaussian_filter(f.astype(np.float32), (1.2, 1.2, 0))
                                               for f in v]).round().astype(np.uint8)) for v in real[48:]])
    fa = ext(a)
    assert fvd(fa, ext(b)) < fvd(fa, ext(blurred))
    video, _ = _toy_clip()
    from workbench.eval.feature_nets import ToyFrameFeatures
    nets = vbench.VBenchNets(ToyFrameFeatures(ext.net, "subject", ext.weight_hash),
                             ToyFrameFeatures(ext.net, "background", ext.weight_hash))
    static = to_tensor(np.repeat(video[:1], 8, 0))[None]
    s = vbench.vbench_clips(static, static[:, :, 0], nets)
    assert s["subject_consistency"][0] == pytest.approx(1.0, abs=1e-5)
    assert s["background_consistency"][0] == pytest.approx(1.0, abs=1e-5)


def test_background_columns_see_background_noise_and_what_an_object_leaves_behind():
    """Known answers: a real clip scores 0 on both; patch noise on the background raises background_mae; a frozen
    object (the first frame repeated) leaves the wake wrong while the rest of the background is right."""
    from dataclasses import asdict

    import numpy as np

    from workbench.config import ToySpec
    from workbench.data.synthetic import render_clip
    from workbench.eval.oracle import background_errors, covered

    video, _, objs = render_clip(5, ToySpec())
    truth = [asdict(o) for o in objs]
    assert background_errors(video, video, truth) == {"background_mae": 0.0, "wake_mae": 0.0}
    true = covered(truth, *video.shape[:3])
    noisy = video.copy()
    patch = np.random.default_rng(0).integers(-40, 41, video.shape[:3])
    noisy[~true] = np.clip(video[~true].astype(int) + patch[~true][:, None], 0, 255).astype(np.uint8)
    assert background_errors(noisy, video, truth)["background_mae"] > 10
    frozen = np.repeat(video[:1], len(video), 0)
    errs = background_errors(frozen, video, truth)
    assert errs["background_mae"] == 0.0 and errs["wake_mae"] > 10


def test_flicker_split_puts_a_static_background_at_zero_and_a_flickering_one_in_the_background_share():
    """bench/flicker_split.py: the two shares sum to the proxy's frame difference; a real clip's background is
    static (share 0); patch noise redrawn every frame on the background lands in the background share only (of
    the flickering proxy's frame difference and of the smoothness proxy's interpolation error)."""
    import importlib.util
    import sys
    from dataclasses import asdict

    from workbench.config import ToySpec
    from workbench.eval.oracle import covered

    spec = importlib.util.spec_from_file_location("flicker_split", Path(__file__).parents[1] / "bench/flicker_split.py")
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(spec.origin).parent))
    spec.loader.exec_module(bench)
    video, _, objs = render_clip(5, ToySpec())
    truth = [asdict(o) for o in objs]
    real = bench.split(video[None], [truth])
    assert real["from_background"] == 0.0 and real["from_objects"] > 0
    assert abs(real["frame_diff"] - 255 * (1 - real["temporal_flickering"])) < 1e-3
    true = covered(truth, *video.shape[:3])
    noisy = video.copy()
    patch = np.random.default_rng(0).integers(-20, 21, video.shape[:3])
    noisy[~true] = np.clip(video[~true].astype(int) + patch[~true][:, None], 0, 255).astype(np.uint8)
    shaky = bench.split(noisy[None], [truth])
    assert shaky["from_background"] > 3 and abs(shaky["from_objects"] - real["from_objects"]) < 0.5
    assert abs(shaky["from_background"] + shaky["from_objects"] - shaky["frame_diff"]) < 1e-3
    # motion smoothness: the same split of the interpolation error; the noise lands in its background share
    for out in (real, shaky):
        assert abs(out["smooth_from_background"] + out["smooth_from_objects"] - out["smooth_err"]) < 1e-3
        assert abs(out["smooth_err"] - 255 * (1 - out["motion_smoothness_proxy"])) < 1e-3
    assert shaky["smooth_from_background"] - real["smooth_from_background"] > 5
    assert abs(shaky["smooth_from_objects"] - real["smooth_from_objects"]) < 2


def test_free_direction_shares_count_only_objects_whose_caption_states_none():
    """Mode collapse: free_<dir> is the object's first move when the caption leaves the direction open."""
    from dataclasses import asdict

    from workbench.eval.oracle import FREE_DIRECTIONS, path_centroids, start_motion
    seen = {True: 0, False: 0}
    for seed in range(40):
        video, _, objs = render_clip(TEST_SEED_OFFSET + seed, ToySpec())
        truth = [asdict(o) for o in objs]
        m = clip_metrics(video, video, truth)
        stated = truth[0]["direction_stated"]
        seen[stated] += 1
        if stated:
            assert all(math.isnan(m[f"free_{d}"]) for d in FREE_DIRECTIONS)
        else:
            first = start_motion(path_centroids(truth[0]["xy"], truth[0]["size"]))[0]
            assert [m[f"free_{d}"] for d in FREE_DIRECTIONS] == [float(first == d) for d in FREE_DIRECTIONS]
    assert seen[True] and seen[False]

"""The second toy FVD network (the self-supervised video autoencoder, workbench/eval/toy_ae.py): shipped weights,
determinism, its column beside FVD in the tables, and that it sees the background the toy FVD net hardly sees."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench import shipped
from workbench.eval import fvd as fvd_module
from workbench.eval.fvd import ToyAEExtractor, fvd, load_extractor

ROOT = Path(__file__).resolve().parents[1]
TOY_AE_WEIGHTS, TOY_FVD_WEIGHTS = shipped(fvd_module.TOY_AE_WEIGHTS), shipped(fvd_module.TOY_FVD_WEIGHTS)
needs_weights = pytest.mark.skipif(not (TOY_AE_WEIGHTS.is_file() and TOY_FVD_WEIGHTS.is_file()),
                                   reason="toy FVD weights not built")


def _bench():
    spec = importlib.util.spec_from_file_location("fvd_background", ROOT / "bench" / "fvd_background.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensor(videos: np.ndarray) -> torch.Tensor:
    from workbench.data.synthetic import to_tensor
    return torch.stack([to_tensor(v) for v in videos])


@needs_weights
def test_shipped_autoencoder_loads_small_and_deterministic():
    assert TOY_AE_WEIGHTS.stat().st_size < 1 * 2 ** 20
    info = json.loads((TOY_AE_WEIGHTS.parent / "info.json").read_text())
    assert "--kind ae" in info["command"] and info["recon_mae"] < 12
    a, b = load_extractor("toy-ae"), load_extractor(str(TOY_AE_WEIGHTS))  # by name and by file (recognised as AE)
    assert isinstance(b, ToyAEExtractor) and a.describe() == b.describe()
    assert a.describe().startswith("toy-ae@") and a.describe().endswith("24x24x8f")
    x = _tensor(_bench().clips(range(6))[0])
    fa, fb = a(x), b(x)
    assert fa.shape == (6, 224) and fa.dtype == np.float64 and np.isfinite(fa).all()
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(fa[:3], a(x[:3]))  # a clip's feature does not depend on its batch


def test_training_is_deterministic_given_the_seed(tmp_path, monkeypatch):
    import workbench.eval.toy_ae as toy_ae
    monkeypatch.setattr(toy_ae, "CALIBRATION_SEEDS", range(toy_ae.VAL_SEED_OFFSET + 1000,
                                                          toy_ae.VAL_SEED_OFFSET + 1016))
    monkeypatch.setattr(toy_ae, "reconstruction_error", lambda net, num=0, spec=None: 0.0)
    paths = [toy_ae.train_toy_video_ae(tmp_path / name, steps=2, batch_size=2, seed=seed)
             for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    a, b, c = (toy_ae.load_toy_video_ae(p).state_dict() for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "a" / "info.json").read_text())["steps"] == 2


@needs_weights
def test_autoencoder_sees_background_edits_the_toy_fvd_net_hardly_sees():
    """FVD of real clips against the same clips with background noise (or darkened), relative to each network's
    real-vs-real floor: the autoencoder's ratio is many times the toy FVD net's (at 256 clips: 1.6 against 0.06
    for noise, 13 against 0.09 for darkening); 48 clips, so the floor is high and the margin kept wide."""
    bench = _bench()
    real, mask = bench.clips(range(48))
    other, _ = bench.clips(range(48, 96))
    noise = np.random.default_rng(0).integers(-40, 41, real.shape[:4])[..., None]
    noised = np.where(mask[..., None], real, np.clip(real.astype(int) + noise, 0, 255)).astype(np.uint8)
    darkened = np.where(mask[..., None], real, (real * 0.6).round()).astype(np.uint8)
    recoloured = np.where(mask[..., None], np.roll(real, 1, axis=-1), real)
    ratios = {}
    for name in ("toy", "toy-ae"):
        ext = load_extractor(name)
        ref = ext(_tensor(real))
        floor = fvd(ext(_tensor(other)), ref)
        ratios[name] = {k: fvd(ext(_tensor(v)), ref) / floor
                        for k, v in (("noised", noised), ("darkened", darkened), ("recoloured", recoloured))}
    assert ratios["toy-ae"]["noised"] > 5 * ratios["toy"]["noised"], ratios
    assert ratios["toy-ae"]["darkened"] > 1.0 and ratios["toy-ae"]["darkened"] > 10 * ratios["toy"]["darkened"], ratios
    assert ratios["toy-ae"]["recoloured"] > 0.5 * ratios["toy"]["recoloured"], ratios  # it still sees the objects


def test_tables_carry_both_fvd_columns_and_name_their_networks():
    from workbench.eval.tables import display, metric_columns, report_markdown
    rows = [{"method": "a", "steps": s, "nfe": s, "seed": seed, "num": 64, "fvd": 100.0 + seed, "fvd_ae": 10.0 + seed,
             "psnr": 30.0, "fvd_variant": "toy-fvd@x", "fvd_ae_variant": "toy-ae@y"} for s in (1, 2) for seed in (0, 1)]
    df = pd.DataFrame(rows)
    assert metric_columns(df)[:2] == ["fvd", "fvd_ae"] and display("fvd") == "FVD"
    table = report_markdown(df)
    assert "| FVD | FVD (toy-ae) | PSNR |" in table
    assert "- fvd_variant: toy-fvd@x" in table and "- fvd_ae_variant: toy-ae@y" in table
    assert "FVD (toy-ae) uses the self-supervised toy video autoencoder" in table
    assert "FVD (toy-ae)" not in report_markdown(df.drop(columns=["fvd_ae", "fvd_ae_variant"]))

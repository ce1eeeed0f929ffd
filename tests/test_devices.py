"""One device rule (workbench.devices): every stage runs where it is asked, and nothing of it lands elsewhere.

On a CPU-only machine the only devices are the CPU and "meta" (shapes, no data). So:
  - a bad or absent device is refused in one line (exit 2) before anything loads or is written;
  - `Placement` (a forward pre/post hook on every module) records any module whose parameters, buffers, inputs or
    outputs are not on the asked device; its own tests show it catches a stray parameter and a stray input;
  - the model sampled on "meta" (load_model placing the net and its encoders there, the toy and the tiny Wan with
    its VAE, UMT5 and CLIP) shows every tensor the sampler feeds a network follows the model to its device (noise is
    drawn on the CPU, then moved) - a tensor left on the CPU would be recorded;
  - sample, eval and preferences run from the command line with --device cpu under the same hooks.
"""
import json
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

from workbench import shipped
from workbench.devices import Processes, resolve_device
from workbench.__main__ import main

TEACHER = str(shipped("experiments/toy/teacher"))


class Placement:
    """Every module forward while active: its own parameters and buffers, tensor inputs and outputs on `device`."""

    def __init__(self, device):
        self.device, self.wrong, self.calls = torch.device(device), [], 0

    def _check(self, module, what, tensors):
        for t in tensors:
            if torch.is_tensor(t) and t.device != self.device:
                self.wrong.append(f"{type(module).__name__} {what} on {t.device}")

    def _before(self, module, args):
        self.calls += 1
        self._check(module, "parameter", module.parameters(recurse=False))
        self._check(module, "buffer", module.buffers(recurse=False))
        self._check(module, "input", _flat(args))

    def _after(self, module, args, out):
        self._check(module, "output", _flat(out))

    @contextmanager
    def watching(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        hooks = [register_module_forward_pre_hook(self._before), register_module_forward_hook(self._after)]
        try:
            yield self
        finally:
            for h in hooks:
                h.remove()


def _flat(x):
    if torch.is_tensor(x):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _flat(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _flat(v)
    elif hasattr(x, "__dataclass_fields__"):                      # a Conditioning
        for name in x.__dataclass_fields__:
            yield from _flat(getattr(x, name))


# -- the rule -----------------------------------------------------------------------------------------------------

def test_auto_is_the_best_device_and_cpu_is_taken_as_asked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


@pytest.mark.parametrize("name", ["meta", "gpu", "cuda:99", "tpu", "", "cpu:x"])
def test_a_device_that_is_not_here_is_refused_in_one_line(name):
    with pytest.raises(ValueError) as e:
        resolve_device(name)
    assert "\n" not in str(e.value) and "--device" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cuda_is_refused_where_there_is_none():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_work_is_split_by_item_and_gathered_in_order():
    shares = [Processes(r, 3).mine(8) for r in range(3)]
    assert sorted(j for s in shares for j in s) == list(range(8)) and list(shares[1]) == [1, 4, 7]
    alone = Processes()
    assert alone.main and alone.gather({j: j * j for j in alone.mine(4)}, 4) == [0, 1, 4, 9]


@pytest.mark.parametrize("cmd", [
    ["sample", TEACHER, "--steps", "1", "--num", "1"],
    ["eval", TEACHER, "--steps", "1", "--num", "1", "--seeds", "0", "--cache", ""],
    ["preferences", TEACHER, "--num", "1"],
    ["study", "build", "--models", "teacher@1", "ccd@1", "--items", "1"],
    ["pipeline", "experiments/toy/swiftvideo.yaml"],
])
@pytest.mark.parametrize("device", ["meta", "cuda:7", "nonsense"])
def test_every_command_refuses_a_device_that_is_not_here_before_any_work(cmd, device, tmp_path, capsys):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("cuda:7 is here")
    out = tmp_path / "out"
    assert main([*cmd, "--out", str(out), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device ") and err.count("\n") == 1, err
    assert not out.exists()


# -- the checker can fail -------------------------------------------------------------------------------------------

def test_placement_catches_a_parameter_elsewhere():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].to("meta")
    with Placement("cpu").watching() as seen, pytest.raises(RuntimeError):  # the forward fails after the hook looked
        net(torch.zeros(1, 2))
    assert "Linear parameter on meta" in seen.wrong


def test_placement_catches_an_input_elsewhere():
    net = torch.nn.Linear(2, 2).to("meta")
    with Placement("meta").watching() as seen:
        net(torch.zeros(1, 2, device="meta"))
        assert not seen.wrong and seen.calls == 1
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 2))       # a CPU input to a meta network
    assert "Linear input on cpu" in seen.wrong


# -- the model follows its device -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_wan_model(tmp_path_factory):
    """A model folder of the tiny Wan (VAE, UMT5, CLIP from local folders) at init weights."""
    from safetensors.torch import save_file
    from workbench.models.tiny_wan import save_tiny_wan
    from workbench.config import to_dict
    from workbench.methods import load_config
    from workbench.models import build_backbone
    import yaml
    tmp = tmp_path_factory.mktemp("tiny-wan")
    sets = [f"model.{k}={v}" for k, v in save_tiny_wan(tmp / "parts").items()] + ["data.toy.size=32",
                                                                                 "data.toy.frames=5"]
    cfg = load_config("experiments/micro/teacher.yaml", sets)
    net, _ = build_backbone(cfg.model)
    (tmp / "model").mkdir()
    save_file({k: v.contiguous() for k, v in net.transformer.state_dict().items()}, tmp / "model" / "model.safetensors")
    (tmp / "model" / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    return tmp / "model"


@pytest.mark.parametrize("which", ["toy", "tiny-wan"])
def test_a_model_on_meta_feeds_its_networks_only_meta_tensors(which, tiny_wan_model, monkeypatch, root):
    """load_model places the net and its encoders; generate draws noise on the CPU (the same for every device)
    and moves it: every module forward of a sample on "meta" sees meta parameters, inputs and outputs."""
    import workbench.runs as runs
    from workbench.generate import generate_latents, test_batch
    monkeypatch.chdir(root)
    cpu = runs.load_model(tiny_wan_model, device="cpu").encoders if which == "tiny-wan" else None
    monkeypatch.setattr(runs, "resolve_device", lambda name: torch.device("meta"))  # "meta" past the rule
    model = runs.load_model(TEACHER if which == "toy" else tiny_wan_model, device="meta")
    assert {p.device.type for p in model.net.parameters()} == {"meta"}
    parts = [getattr(model.encoders.codec, "vae", None), getattr(model.encoders.text_encoder, "model", None),
             getattr(model.encoders.image_encoder, "model", None)]
    assert {p.device.type for m in parts if m is not None for p in m.parameters()} <= {"meta"}
    assert (which == "tiny-wan") == all(m is not None for m in parts)
    batch = test_batch(model.config, 2)
    if which == "tiny-wan":  # UMT5 reads a value (.item()) and CLIP preprocesses with PIL: neither runs on "meta",
        text = cpu.text_encoder(batch["caption"])        # so their tokens come from CPU copies (CPU tensors, as the
        image = cpu.image_encoder(batch["video"][:, :, 0])  # toy text encoder's are), left to the model to move
        model.encoders.text_encoder = lambda captions: text
        model.encoders.image_encoder = lambda first: image
    with Placement("meta").watching() as seen:
        latents = generate_latents(model, batch, 2, seed=0)
    assert latents.device.type == "meta" and seen.calls > 10
    assert not seen.wrong, sorted(set(seen.wrong))[:10]


def test_load_model_casts_the_frozen_network_to_bf16_keeping_fp32_modules(tiny_wan_model):
    from workbench.runs import load_model
    model = load_model(tiny_wan_model, dtype="bfloat16")
    dtypes = {n: p.dtype for n, p in model.net.named_parameters()}
    assert dtypes["transformer.patch_embedding.weight"] == torch.bfloat16
    keep = set(model.net.transformer._keep_in_fp32_modules)
    assert keep and all(d == torch.float32 for n, d in dtypes.items() if keep & set(n.split(".")))
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_wan_model, dtype="float8")


# -- the commands run where asked -----------------------------------------------------------------------------------

def test_sample_eval_and_preferences_run_every_network_on_the_asked_device(tmp_path, monkeypatch, root):
    monkeypatch.chdir(root)
    runs = {
        "sample": ["sample", TEACHER, "--steps", "2", "--num", "2", "--out", str(tmp_path / "s")],
        "eval": ["eval", TEACHER, "--steps", "1", "--num", "2", "--seeds", "0", "--cache", "",
                 "--out", str(tmp_path / "e")],
        "preferences": ["preferences", TEACHER, "--num", "2", "--win-steps", "2", "--lose-steps", "1",
                        "--out", str(tmp_path / "p")],
    }
    for name, argv in runs.items():
        with Placement("cpu").watching() as seen:
            assert main([*argv, "--device", "cpu"]) == 0, name
        assert seen.calls > 10 and not seen.wrong, (name, sorted(set(seen.wrong))[:10])
    assert json.loads((tmp_path / "p" / "pairs.json").read_text())["meta"]["num_pairs"] == 2


def test_the_device_help_names_the_rule():
    r = subprocess.run([sys.executable, "-m", "workbench", "eval", "--help"], capture_output=True, text=True)
    assert "--device" in r.stdout and "auto" in r.stdout


# -- several processes: each its share, the main one writes what one process writes ---------------------------------

def test_two_processes_write_what_one_process_writes(tmp_path, root, monkeypatch):
    """preferences, eval and study build under `accelerate launch` with 2 CPU processes against a plain run: the
    same files, byte for byte, but for eval's timings (sec_per_clip, and the table and figure that show it) and the
    study's creation time. Batches of 2 pairs, 1 eval clip and 2 study clips, so both processes have work (process
    r takes batches j % 2 == r)."""
    import pandas as pd
    from tests.test_multiprocess import DDP, failure, launch
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the launcher's default for its processes: the plain run's too
    prefs = ["preferences", TEACHER, "--num", "5", "--batch-size", "2", "--win-steps", "2", "--lose-steps", "1",
             "--device", "cpu"]
    evals = ["eval", TEACHER, "--steps", "1,2", "--num", "3", "--seeds", "0", "--batch-size", "1", "--cache", "",
             "--device", "cpu"]
    study = ["study", "build", "--models", "teacher@2", "ccd@1", "--items", "3", "--batch-size", "2", "--device", "cpu"]
    for name, argv in (("prefs", prefs), ("eval", evals), ("study", study)):
        r = launch(root, DDP, "-m", "workbench", *argv, "--out", str(tmp_path / f"{name}-2"))
        assert r.returncode == 0, failure(r)
        r = subprocess.run([sys.executable, "-m", "workbench", *argv, "--out", str(tmp_path / f"{name}-1")], cwd=root,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    one, two = tmp_path / "prefs-1", tmp_path / "prefs-2"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert len(json.loads((one / "pairs.json").read_text())["items"]) == 5
    for f in one.iterdir():
        assert f.read_bytes() == (two / f.name).read_bytes(), f.name
    one, two = tmp_path / "eval-1", tmp_path / "eval-2"
    timed = {"results.csv", "table.md", "fvd_vs_steps.html"}                      # they show sec_per_clip
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for f in one.iterdir():
        if f.name not in timed:
            assert f.read_bytes() == (two / f.name).read_bytes(), f.name
    a, b = (pd.read_csv(d / "results.csv").drop(columns="sec_per_clip") for d in (one, two))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert len(a) == 2 and a.fvd.notna().all()
    # The study: H.264 is encoded byte-stably (one thread, no macroblock tree: data.io.write_mp4), so the same
    # files but for the manifest's creation time
    one, two = tmp_path / "study-1", tmp_path / "study-2"
    for sub in ("frames", "videos"):
        assert sorted(p.name for p in (one / sub).iterdir()) == sorted(p.name for p in (two / sub).iterdir())
        for f in (one / sub).iterdir():
            assert f.read_bytes() == (two / sub / f.name).read_bytes(), f.name
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert a["items"] == b["items"] and a["models"] == b["models"] and len(a["items"]) == 3 + 1  # + 1 attention item



"""experiments/tiny-wan: experiments/wan's pipeline at tiny size, end to end from its one setup command, on real
diffusers/transformers classes with random weights: the tiny folders and clips -> the encoders' outputs cached ->
CCD -> CCD + DA -> TA pairs -> TA (two rounds) -> the evaluation -> a study set -> a stock diffusers export that
loads with no custom code; on one process and on two."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_wan_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("tiny-wan")
    shutil.copytree(ROOT / "experiments/tiny-wan", home / "experiments/tiny-wan")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        assert main(["tiny-wan", "--out", "models/tiny-wan", "--clips", "24"]) == 0
        assert main(["pipeline", "experiments/tiny-wan/swiftvideo.yaml", "--check"]) == 2    # no cache yet
        assert main(["data", "cache", "experiments/tiny-wan/ccd.yaml", "--out", "runs/tiny-wan-cache"]) == 0
        assert main(["pipeline", "experiments/tiny-wan/swiftvideo.yaml", "--check"]) == 0
        assert main(["pipeline", "experiments/tiny-wan/swiftvideo.yaml"]) == 0
        yield home


def test_every_stage_trains_on_the_wan_classes_and_is_evaluated(tiny_wan_run):
    run = tiny_wan_run / "runs/tiny-wan-swiftvideo"
    results = pd.read_csv(run / "eval/results.csv")
    assert set(results["method"]) == {"ccd", "ccd_da", "ta1", "ta2"} and set(results["steps"]) == {1, 2, 4}
    assert results["fvd"].notna().all() and results["psnr"].notna().all()
    for stage in ("ccd", "ccd_da", "ta1", "ta2"):
        launch = json.loads((run / stage / "launch.json").read_text())
        assert launch["processes"] == 1 and launch["activation_checkpointing"]
        assert (run / stage / "model/model.safetensors").is_file()
    da_logged = pd.read_json(run / "ccd_da/metrics.jsonl", lines=True)
    assert {"loss_adv_g", "loss_d"} <= set(da_logged.columns)                      # DA's GAN ran
    assert json.loads((run / "ta1/preferences/pairs.json").read_text())["meta"]["num_pairs"] == 4


def test_a_study_set_and_a_stock_diffusers_export_follow(tiny_wan_run, monkeypatch):
    monkeypatch.chdir(tiny_wan_run)
    run = "runs/tiny-wan-swiftvideo"
    assert main(["study", "build", "--models", f"{run}/ccd/model@4", f"{run}/ta2/model@4", "--items", "2",
                 "--out", "runs/study"]) == 0
    assert (tiny_wan_run / "runs/study").is_dir()
    assert main(["export", f"{run}/ccd", "--diffusers", "runs/diffusers", "--steps", "4", "--dtype", "float32"]) == 0
    from diffusers import WanImageToVideoPipeline
    meta = json.loads((tiny_wan_run / "runs/diffusers/export.json").read_text())
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_wan_run / "runs/diffusers", **meta["load"])
    assert type(pipe).__name__ == "WanImageToVideoPipeline" and not meta["load"].get("trust_remote_code")


def test_the_same_pipeline_on_two_processes(tiny_wan_run):
    """`accelerate launch` of two CPU processes (gloo): every stage trains sharded (train.fsdp), the pairs and the
    evaluation are split across the processes, and the main process alone writes (exports, tables, sheets)."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        str(ROOT / "experiments/wan/accelerate_fsdp.yaml"), "--num_processes", "2",
                        "--main_process_port", str(free), "-m", "workbench", "pipeline",
                        "experiments/tiny-wan/swiftvideo.yaml", "--out", "runs/two"],
                       cwd=tiny_wan_run, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    run = tiny_wan_run / "runs/two"
    for stage in ("ccd", "ccd_da", "ta1", "ta2"):
        launch = json.loads((run / stage / "launch.json").read_text())
        assert (launch["processes"], launch["fsdp"], launch["global_batch"]) == (2, True, 4)
    one, two = (pd.read_csv(tiny_wan_run / p / "eval/results.csv") for p in ("runs/tiny-wan-swiftvideo", "runs/two"))
    assert list(two[["method", "steps"]].itertuples(index=False)) == list(one[["method", "steps"]].itertuples(index=False))

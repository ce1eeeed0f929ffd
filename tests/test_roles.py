"""The trainer's roles with a two-role method (tests/two_roles.py): A = the exported model every 5th step at its
own lr with an EMA, B = a critic every step at another lr. Update counts, per-role LR schedules, the EMA moving
only on A's updates, no graph through A when it does not update, and SIGKILL + resume bitwise equal."""
import json
import sys

import pytest
from safetensors.torch import load_file

from workbench.methods import load_config
from workbench.train import train
from workbench.train.roles import lr_lambda

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import two_roles  # noqa: E402  registers `two_roles`

from test_resume import folder_state  # noqa: E402

MICRO = "experiments/micro/teacher.yaml"
SETS = ["train.method=two_roles", "train.steps=12", "train.ckpt_every=1", "train.keep_ckpts=20", "train.log_every=1",
        "train.schedule=cosine", "train.warmup_steps=2", "train.min_lr_ratio=0.1", "train.sample_num=1",
        "train.sample_steps=[1]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = load_config(MICRO, SETS)
    return cfg, train(cfg, tmp_path_factory.mktemp("roles") / "run", progress=False)


def _ckpt(run, step, name):
    return load_file(run / "checkpoints" / f"step-{step:06d}" / f"{name}.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_each_role_updates_on_its_own_schedule(run):
    cfg, path = run
    steps_a = [s for s in range(12) if s % 5 == 0]                     # A at steps 0, 5, 10
    state = json.loads((path / "checkpoints" / "step-000012" / "state.json").read_text())
    assert state["export"] == "model" and list(state["roles"]) == ["model", "critic"]
    adam_steps = lambda name: {v.item() for k, v in _ckpt(path, 12, f"optim-{name}").items() if k.endswith(".step")}  # noqa: E731
    assert adam_steps("model") == {len(steps_a)} and adam_steps("critic") == {12}
    for name, updates in (("model", len(steps_a)), ("critic", 12)):
        sched = state["roles"][name]["scheduler"]
        assert sched["last_epoch"] == updates                          # counted in the role's own updates
    for done in range(1, 13):                                          # A's weights change only after its updates
        changed = not _same(_ckpt(path, done, "model"), _ckpt(path, done - 1, "model")) if done > 1 else True
        assert changed == (done - 1 in steps_a), done
        critic_changed = done == 1 or not _same(_ckpt(path, done, "critic"), _ckpt(path, done - 1, "critic"))
        assert critic_changed


def test_lr_schedules_advance_per_role(run):
    cfg, path = run
    rows = [json.loads(r) for r in (path / "metrics.jsonl").read_text().splitlines()]
    tc = cfg.train
    for r in rows:
        s = r["step"]                                                  # after `s` steps
        updates_a = len([i for i in range(s) if i % 5 == 0])
        assert r["lr/model"] == pytest.approx(2e-3 * lr_lambda(tc, updates_a, 3))
        assert r["lr/critic"] == pytest.approx(5e-4 * lr_lambda(tc, s, 12))
        assert ("loss_model" in r) == ((s - 1) % 5 == 0) and "loss_critic" in r


def test_ema_moves_only_on_the_roles_updates(run):
    _, path = run
    for done in range(2, 13):
        moved = not _same(_ckpt(path, done, "model-ema"), _ckpt(path, done - 1, "model-ema"))
        assert moved == ((done - 1) % 5 == 0), done
    assert not (path / "checkpoints" / "step-000012" / "critic-ema.safetensors").exists()


def test_no_graph_through_a_role_that_does_not_update(tmp_path):
    from workbench.methods import build_method
    from workbench.models import build_backbone
    from workbench.train import steps_on_batch
    from workbench.data import build_dataset, collate
    cfg = load_config(MICRO, SETS)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    batch = collate([build_dataset(cfg.data, "train")[i] for i in range(2)])
    logs = steps_on_batch(method, cfg.train, batch, 6)
    assert method.model_grad_seen == [True, False, False, False, False, True]
    assert ["loss_model" in r for r in logs] == [True, False, False, False, False, True]


@pytest.mark.parametrize("point,n", [("after-checkpoint", 2), ("mid-checkpoint", 7)])
def test_sigkill_then_resume_is_bitwise_equal_with_two_roles(point, n, tmp_path, root):
    import subprocess
    sets = [a for s in ["train.method=two_roles", "train.steps=12", "train.ckpt_every=4", "train.keep_ckpts=2",
                        "train.log_every=1", "train.sample_every=4"] for a in ("--set", s)]
    cmd = lambda out, point, n, *extra: subprocess.run(  # noqa: E731
        [sys.executable, "tests/kill_at.py", point, str(n), "train", MICRO, "--out", str(out), *sets, *extra],
        cwd=root, capture_output=True, text=True)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cmd(full, "none", 0).returncode == 0
    assert cmd(cut, point, n).returncode == -9
    resumed = cmd(cut, "none", 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = folder_state(full), folder_state(cut)
    assert a["checkpoints"].keys() == {"step-000008", "step-000012"}
    assert {f for f in a["checkpoints"]["step-000012"][0]} == {
        "model.safetensors", "model-ema.safetensors", "optim-model.safetensors", "critic.safetensors",
        "optim-critic.safetensors", "rng.safetensors"}
    assert a == b


def test_the_readme_add_a_method_example_trains(tmp_path, root):
    """README's "Add a method in one file" code, as written (the file and nothing else), registers its class and its
    settings section, which the loader checks and the run's config.yaml keeps; it trains through the loop."""
    import yaml

    from workbench.config import ConfigError
    from workbench.methods import METHODS
    text = (root / "README.md").read_text().split("## Add a method in one file", 1)[1]
    code = text.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)                 # its @register adds it to METHODS
    try:
        assert METHODS["my_method"] is namespace["MyMethod"]
        sets = ["train.method=my_method", "train.steps=6", "train.sample_num=1", "train.log_every=1",
                "train.sample_steps=[1]"]
        with pytest.raises(ConfigError, match="my_method.critic_lr: expected a value >= 0"):
            load_config(MICRO, [*sets, "my_method.critic_lr=-1"])
        cfg = load_config(MICRO, [*sets, "my_method.critic_lr=5e-5"])
        assert cfg.my_method.critic_lr == 5e-5
        run = train(cfg, tmp_path / "run", progress=False)
    finally:
        del METHODS["my_method"]
    assert yaml.safe_load((run / "config.yaml").read_text())["my_method"] == {"critic_lr": 5e-5}
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [("loss_model" in r, "loss_critic" in r) for r in rows] == [(True, True)] + [(False, True)] * 4 + [(True, True)]

"""The one module that knows where things are in the folders the workbench writes and reads.

    run folder       config.yaml  launch.json  metrics.jsonl  checkpoints/step-NNNNNN/  samples/step-NNNNNN.png
                     (tensorboard/)
    checkpoint       <role>.safetensors  <role>-ema.safetensors  optim-<role>.safetensors  state-<name>.safetensors
                     rng.safetensors  state.json (step, roles, which role is exported)
    model folder     model.safetensors  config.yaml  metrics.jsonl  export.json  (lora/)
    pipeline folder  <stage>/ (the stage's run folder; its export in <stage>/model/, TA's pairs in
                     <stage>/preferences/)  eval/

The writers (the training loop, the checkpoint writer, export, the pipeline) and the readers (runs, compare, the
app, the notebooks) all go through it; no other module spells these names. Paths are taken as given: relative to
the caller's working directory, or absolute.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from workbench.files import staged_file, writing

CONFIG, METRICS, WEIGHTS, MARKER, STATE = "config.yaml", "metrics.jsonl", "model.safetensors", "export.json", "state.json"


class Folder:
    """A folder of one of the kinds below, at `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class Saved(Folder):
    """A folder that keeps a run's config and metrics: a run folder, or a model folder exported from one."""

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS


class Checkpoint(Folder):
    """One checkpoint folder, <run>/checkpoints/step-NNNNNN/: complete when its state.json is there."""

    @property
    def state_file(self) -> Path:
        return self.path / STATE

    def file(self, name: str) -> Path:
        """The safetensors file `name` (a role, `<role>-ema`, `optim-<role>`, `state-<name>`, `rng`)."""
        return self.path / f"{name}.safetensors"

    @property
    def complete(self) -> bool:
        return self.state_file.is_file()

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.path.parent.parent)

    def state(self) -> dict:
        """Its state.json, or a ValueError naming the file (a hand edit, a disk error)."""
        try:
            state = json.loads(self.state_file.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.state_file}: not a checkpoint's state.json (not JSON: {e})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{self.state_file}: not a checkpoint's state.json (expected a JSON object)")
        return state

    def set_aside(self) -> Path:
        """Renamed out of the way (`.unreadable-step-*`) and kept for a look: an unreadable checkpoint."""
        aside = self.path.with_name(f".unreadable-{self.path.name}")
        self.path.replace(aside)
        return aside

    def exported_weights(self) -> Path:
        """The weights it exports: the exported role's EMA where it keeps one, else the role's weights."""
        role = self.state().get("export", "model")
        ema = self.file(f"{role}-ema")
        return ema if ema.is_file() else self.file(role)


class RunFolder(Saved):
    """A training run's folder. The loop writes it through these methods; readers find its files here."""

    @property
    def launch(self) -> Path:
        """launch.json: how the run was launched (processes, global batch, mixed precision, devices, versions)."""
        return self.path / "launch.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoint_root(self) -> Path:
        return self.path / "checkpoints"

    @property
    def is_run(self) -> bool:
        """Whether it holds checkpoints (a model folder holds weights instead)."""
        return self.checkpoint_root.is_dir()

    def checkpoint(self, step: int) -> Checkpoint:
        return Checkpoint(self.checkpoint_root / f"step-{step:06d}")

    def checkpoints(self) -> list[Checkpoint]:
        """The complete checkpoints, oldest first."""
        root = self.checkpoint_root
        return sorted((Checkpoint(p) for p in root.glob("step-*") if (p / STATE).is_file()),
                      key=lambda c: c.path.name) if root.is_dir() else []

    def latest(self) -> Checkpoint | None:
        return (self.checkpoints() or [None])[-1]

    def staging(self, step: int) -> Path:
        """Where the checkpoint of `step` is written before it is renamed into place."""
        return self.checkpoint_root / f".tmp-step-{step:06d}"

    def leftovers(self) -> list[Path]:
        """What a killed run left among the checkpoints: a pruning (`.pruning-*`), an unfinished checkpoint
        (`.tmp-step-*`), a `step-*` folder without state.json (half deleted by an older version)."""
        root = self.checkpoint_root
        return [*root.glob(".pruning-step-*"), *root.glob(".tmp-step-*"),
                *(p for p in root.glob("step-*") if not (p / STATE).is_file())]

    def sample_sheet(self, step: int, kind: str = "step") -> Path:
        """The sample sheet of `step` (kind "step"), or a method's own images ("estimates": DMD2's x0 estimates)."""
        return self.path / "samples" / f"{kind}-{step:06d}.png"

    def sample_sheets(self) -> list[Path]:
        return sorted((self.path / "samples").glob("step-*.png"))

    @property
    def model(self) -> ModelFolder:
        """Where a pipeline stage exports the run (`run_stage`)."""
        return ModelFolder(self.path / "model")

    @property
    def preferences(self) -> Path:
        """Where a TA stage keeps the preference pairs it trains on."""
        return self.path / "preferences"

    def write_config(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with writing(self.config):
            self.config.write_text(text)

    def write_launch(self, launch: dict) -> None:
        with staged_file(self.launch, kind="launch") as tmp:
            tmp.write_text(json.dumps(launch, indent=1) + "\n")

    def append_metrics(self, row: dict) -> None:
        """One metrics.jsonl row; the file is opened per row, so a write that failed is not retried at close."""
        with writing(self.metrics), open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            raise FileNotFoundError(f"{self.metrics}: no metrics.jsonl (is this a run folder?)")
        return [json.loads(r) for r in self.metrics.read_text().splitlines() if r.strip()]

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint a run resumes from, so metrics.jsonl has each step once."""
        if self.metrics.is_file():
            rows = [r for r in self.metrics.read_text().splitlines() if _row_step(r) <= step]
            with staged_file(self.metrics, kind="metrics") as tmp:  # a kill mid-rewrite keeps the old rows whole
                tmp.write_text("".join(r + "\n" for r in rows))


def _row_step(row: str) -> float:
    """A metrics row's step; a row torn by a kill mid-write counts as after every checkpoint."""
    try:
        return json.loads(row)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class ModelFolder(Saved):
    """A shippable model folder, as `export` writes it (the shipped toy models are ones)."""

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def marker(self) -> Path:
        """export.json: written by `export` (its source, step, dtype and files); marks a folder --force may replace."""
        return self.path / MARKER

    @property
    def lora(self) -> Path:
        return self.path / "lora"

    @property
    def exists(self) -> bool:
        return self.weights.is_file()


class PipelineFolder(Folder):
    """A pipeline's folder: a run folder per trained stage, its export and TA's pairs beside it, and the eval."""

    RESERVED = ("eval",)                                   # a stage may not be named after a folder of the pipeline's

    def run(self, stage: str) -> RunFolder:
        return RunFolder(self.path / stage)

    @property
    def eval(self) -> Path:
        return self.path / "eval"


def saved_config(weights_folder: str | Path) -> Path | None:
    """The config.yaml a run saved for the weights in this folder: beside them (an exported model folder) or in
    the run folder of a checkpoint (<run>/checkpoints/step-N/); None if neither exists."""
    folder = Path(weights_folder)
    return next((p for p in (folder / CONFIG, Checkpoint(folder).run.config) if p.is_file()), None)


def resolve_weights(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) of a run folder (its newest checkpoint), a checkpoint folder, or a model folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint, run or model folder")
    if RunFolder(p).is_run:
        latest = RunFolder(p).latest()
        if latest is None:
            raise FileNotFoundError(f"{p}: run folder has no complete checkpoint")
        return resolve_weights(latest.path)
    if Checkpoint(p).complete:
        weights = Checkpoint(p).exported_weights()
    elif ModelFolder(p).exists:
        weights = ModelFolder(p).weights
    else:
        raise FileNotFoundError(f"{p}: expected a run folder, a checkpoint ({STATE}) or {WEIGHTS}")
    cfg = saved_config(p)
    if cfg is None:
        raise FileNotFoundError(f"{p}: no {CONFIG} beside the weights or in the run folder")
    return weights, cfg


def find_runs(*roots: str | Path) -> list[Path]:
    """Run and model folders (config.yaml beside metrics.jsonl) under `roots`, sorted."""
    return sorted({f.parent for root in map(Path, roots) for f in root.rglob(METRICS) if (f.parent / CONFIG).is_file()})


def find_models(*roots: str | Path) -> dict[str, Path]:
    """Every model folder (model.safetensors + config.yaml) under `roots`, named by its path below its root."""
    return {str(w.parent.relative_to(root)): w.parent for root in map(Path, roots)
            for w in sorted(root.rglob(WEIGHTS)) if (w.parent / CONFIG).is_file()}


def find_eval_tables(*roots: str | Path) -> list[Path]:
    """Every evaluation's results.csv under `roots`, sorted."""
    return sorted(f for root in map(Path, roots) for f in root.rglob("results.csv"))


def find_tables(*roots: str | Path) -> list[Path]:
    """Every markdown table under `roots` (an evaluation's table.md, an ablation's <name>_table.md), per root sorted."""
    return [f for root in map(Path, roots) for f in sorted(root.rglob("*table.md"))]

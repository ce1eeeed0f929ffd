"""`python -m workbench pipeline`: the SwiftVideo stages in order, then the evaluation table and plots.

teacher (reused if shipped) -> CCD -> CCD + DA -> TA round 1 -> TA round 2 -> evaluation. Each stage is a
train config plus the model it starts from; its run folder is <out>/<stage>, its exported model
<out>/<stage>/model. A stage whose model is exported is skipped; one with checkpoints resumes. A TA stage
first builds its preference pairs from the model it starts from (<out>/<stage>/preferences).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from typing import Literal

from workbench.config import ConfigError, flat, load_dataclass, to_dict, trained_changes
from workbench.files import check_output_folder
from workbench.folders import ModelFolder, PipelineFolder, RunFolder
from workbench.methods import load_config


@dataclass
class PreferenceStage:
    num: int = 512                   # pairs (train clips 0..num-1)
    win_steps: int = 8               # winner: this many Euler steps of the starting model
    lose_steps: int = 4              # loser: this many
    winners: Literal["sampled", "real"] = "sampled"  # real clips win: Figure 6 ablation
    seed: int = 0


@dataclass
class Stage:
    name: str = ""
    config: str = ""                 # train config YAML
    init: str = ""                   # start from: an earlier stage's name or a model folder ("" = the config's weights)
    teacher: str = ""                # distillation teacher: an earlier stage's name ("" = the starting model)
    reuse: str = ""                  # a model folder used as is when it holds model.safetensors (the shipped teacher)
    set: list[str] = field(default_factory=list)   # overrides of the train config, key=value
    preferences: PreferenceStage | None = None      # TA: build pairs from `init` first


@dataclass
class PipelineEval:
    models: list[str] = field(default_factory=list)  # stage names to evaluate (default: all)
    steps: tuple[int, ...] = (2, 4)
    num: int = 64                    # test clips per (model, steps, seed)
    seeds: tuple[int, ...] = (0, 1, 2)
    sheet_steps: int = 4             # the step count of the stage-by-stage contact sheet
    sheet_num: int = 4               # test clips in that sheet (0 = no sheet)
    RANGES = {"num": (1, None), "sheet_steps": (1, None), "sheet_num": (0, None)}


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    out: str = "runs/pipeline"
    stages: list[Stage] = field(default_factory=list)
    set: list[str] = field(default_factory=list)    # overrides of every stage's train config, before its own `set`
                                                    # (a diffusion teacher's model.vp_schedule and model.prediction)
    eval: PipelineEval = field(default_factory=PipelineEval)


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    """The pipeline config with every stage's train config and overrides checked: a bad key in the last stage is
    refused now, not after the first stages have trained."""
    cfg = load_dataclass(PipelineConfig, path, overrides)
    for s in cfg.stages:
        s.set = [*cfg.set, *s.set]
    names = [s.name for s in cfg.stages]
    for i, s in enumerate(cfg.stages):
        if not s.name or not (s.config or s.reuse):
            raise ConfigError(f"{path}: stages[{i}] needs a name and a config (or reuse)")
        if s.name in names[:i]:  # two stages would share one run folder
            raise ConfigError(f"{path}: stages[{i}].name: {s.name!r} is also the name of stages[{names.index(s.name)}]")
        if "/" in s.name or s.name in (".", "..", *PipelineFolder.RESERVED):
            raise ConfigError(f"{path}: stages[{i}].name: {s.name!r} names a folder in the pipeline's (expected a "
                              f"plain name, not {' or '.join(map(repr, PipelineFolder.RESERVED))})")
        if s.config:
            try:
                load_config(s.config, s.set)   # train.method and its sections included
            except ConfigError as e:
                raise ConfigError(f"{path}: stages[{i}] ({s.name}): {e}") from None
        for key in ("init", "teacher"):
            ref = getattr(s, key)
            if ref and ref not in names[:i] and not Path(ref).is_dir():
                raise ConfigError(f"{path}: stages[{i}].{key}: {ref!r} is neither an earlier stage nor a model folder")
    for m in cfg.eval.models:
        if m not in names:
            raise ConfigError(f"{path}: eval.models: {m!r} is not a stage (stages: {', '.join(names)})")
    return cfg


def run_stage(stage: Stage, run: str | Path, init: Path | None, teacher: Path | None = None, log=print,
              device: str = "auto") -> Path:
    """Train one stage (or reuse/skip it); returns its model folder. Its preference pairs are sampled on `device`
    (training places itself: train/loop.py)."""
    from workbench.devices import processes
    from workbench.export import export_model
    from workbench.preferences import cached_preferences
    from workbench.train import train
    if shipped(stage):
        log(f"reused {stage.reuse}")
        return Path(stage.reuse)
    if not stage.config:
        raise FileNotFoundError(f"stage {stage.name}: {ModelFolder(stage.reuse).weights} not found and the "
                                f"stage has no config to train it from")
    run = RunFolder(run)
    model, prefs = run.model, run.preferences
    overrides = [f"model.weights={ModelFolder(init).weights}"] if init else []
    if teacher:
        overrides.append(f"distill.teacher={ModelFolder(teacher).weights}")
    if stage.preferences:
        overrides.append(f"data.preferences={prefs}")
    cfg = load_config(stage.config, [*overrides, *stage.set, f"out={run.path}", f"name={run.path.name}"])
    if model.exists:
        if run.config.is_file() and (changes := trained_changes(load_config(run.config), cfg)):
            raise ConfigError(f"stage {stage.name}: {run.path} was trained with another config ({'; '.join(changes)}); "
                              f"delete {run.path} to retrain it, or run the pipeline with another --out")
        log(f"done already: {model.path}")
        return model.path
    if stage.preferences:
        p = stage.preferences
        cached_preferences(init, prefs, p.num, p.win_steps, p.lose_steps, p.winners, p.seed, log=log, device=device)
    resume = bool(run.checkpoints())
    log(f"training {cfg.train.method} for {cfg.train.steps} steps" + (" (resuming)" if resume else ""))
    train(cfg, run.path, resume=resume)
    launch = processes()
    if launch.main:                                      # under accelerate launch the main process exports ...
        export_model(run.path, model.path, dtype="float32")
    launch.barrier()                                     # ... and the others start the next stage from it
    return model.path


def run_pipeline(cfg: PipelineConfig, out: str | Path | None = None, device: str = "auto") -> Path:
    """Every stage in order, then <out>/eval: table.md, results.csv, plots and contact sheets; preference pairs,
    evaluation and sheets on `device` (workbench.devices.resolve_device), split across processes when launched."""
    from workbench.devices import resolve_device
    resolve_device(device)                                 # refused now, not after the stages have trained
    folder = PipelineFolder(out or cfg.out)
    check_output_folder(folder.eval, "eval", force=True)  # refused now, not after the stages have trained
    folder.path.mkdir(parents=True, exist_ok=True)
    models: dict[str, Path] = {}
    t0 = time.time()
    needed = needed_stages(cfg)
    for i, stage in enumerate(cfg.stages):
        def log(msg, i=i, stage=stage):
            print(f"[{i + 1}/{len(cfg.stages)} {stage.name} | {(time.time() - t0) / 60:.1f} min] {msg}", flush=True)
        if stage.name not in needed:
            log("not needed: every stage that starts from it is reused")
            continue
        init = models.get(stage.init) or (Path(stage.init) if stage.init else None)
        teacher = models.get(stage.teacher) or (Path(stage.teacher) if stage.teacher else None)
        models[stage.name] = run_stage(stage, folder.run(stage.name).path, init, teacher, log, device)
    evaluate_stages(cfg, folder, models, device)
    print(f"[eval | {(time.time() - t0) / 60:.1f} min] wrote {folder.eval / 'table.md'}", flush=True)
    return folder.path


def shipped(stage: Stage) -> bool:
    return bool(stage.reuse) and ModelFolder(stage.reuse).exists


def needed_stages(cfg: PipelineConfig) -> set[str]:
    """The evaluated stages and, for each of them that must be trained, the stages it starts from (init, teacher):
    a stage only a reused (shipped) stage builds on is skipped (Table 1 reuses SwiftVideo without its TA round 1)."""
    needed = set(cfg.eval.models or [s.name for s in cfg.stages])
    for stage in reversed(cfg.stages):
        if stage.name in needed and not shipped(stage):
            needed |= {ref for ref in (stage.init, stage.teacher) if ref}
    return needed


def evaluate_stages(cfg: PipelineConfig, folder: PipelineFolder, models: dict[str, Path], device: str = "auto"
                    ) -> None:
    from workbench.devices import processes
    from workbench.eval.report import EvalSpec, evaluate
    from workbench.generate import comparison_sheet
    from workbench.plots import evaluation_figures
    from workbench.runs import load_model
    e, procs = cfg.eval, processes()
    names = e.models or list(models)
    evaluate([str(models[n]) for n in names], list(e.steps), e.num, list(e.seeds), folder.eval, names=names,
             sheet_num=0, force=True, draw=evaluation_figures,  # the pipeline's own eval folder, replaced every run
             spec=EvalSpec(device=device))
    if e.sheet_num:                                     # a row per stage, split across processes
        sheet = {n: (lambda n=n: load_model(models[n], device=device), [e.sheet_steps]) for n in names}
        comparison_sheet(sheet, folder.eval / f"stages_{e.sheet_steps}steps.png", e.sheet_num, procs=procs)
    if procs.main:
        write_curves(cfg, folder, models)


def write_curves(cfg: PipelineConfig, folder: PipelineFolder, models: dict[str, Path]) -> None:
    """<out>/eval/<figure>.html for each figure of plots.CURVES some stage logged; a reused stage contributes the
    curves of the run it was exported from (<run>/model -> <run>/metrics.jsonl)."""
    from workbench.plots import CURVES, training_curves
    from workbench.runs import Run
    runs = {}
    for s in cfg.stages:
        if s.name not in models:                                      # not needed, not run
            continue
        found = [r for r in (folder.run(s.name).path, models[s.name], models[s.name].parent)
                 if RunFolder(r).metrics.is_file()]
        if found:                                                     # a run, a shipped model folder (its copy), ...
            runs[s.name] = found[0]
    logged = {name: set(Run(run).metrics.columns) for name, run in runs.items()}
    for figure, keys in CURVES.items():
        having = {name: runs[name] for name in runs if logged[name] & set(keys)}
        if having:
            training_curves(having, keys, log_y=False).write_html(folder.eval / f"{figure}.html",
                                                                  include_plotlyjs="cdn")


# The settings that name a file or folder a researcher supplies ("" and "toy": nothing to supply).
INPUT_KEYS = ("model.transformer_path", "model.vae_path", "model.text_encoder_path", "model.image_encoder_path",
              "model.weights", "distill.teacher", "data.videos.csv", "data.videos.root", "data.preferences",
              "adversarial.feature_net", "data.cache", "model.vp_schedule")


def missing_inputs(cfg: PipelineConfig) -> dict[str, list[str]]:
    """What `--check` reports: each file or folder a stage's config names that is not there, with the 'stage: key'
    settings naming it. Keys an earlier stage provides (model.weights from `init`, distill.teacher from `teacher`,
    TA's pairs) are the pipeline's to make, not the researcher's; a reused stage's model folder must be there."""
    missing: dict[str, list[str]] = {}
    for s in cfg.stages:
        if s.reuse and not shipped(s):
            missing.setdefault(str(ModelFolder(s.reuse).weights), []).append(f"{s.name}: reuse")
        if not s.config or shipped(s):
            continue
        made = {"model.weights"} if s.init else set()
        made |= {"distill.teacher"} if s.teacher else set()
        made |= {"data.preferences"} if s.preferences else set()
        settings = flat(to_dict(load_config(s.config, s.set)))
        for key in INPUT_KEYS:
            path = settings.get(key, "")
            if key not in made and path not in ("", "toy") and not Path(path).exists():
                missing.setdefault(path, []).append(f"{s.name}: {key}")
    return missing

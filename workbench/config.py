"""Typed configs for every stage, loaded from YAML. Unknown keys and wrong types fail loudly.

The core sections (data, model, train, sample, distill) are defined here; each method declares its own sections
in its file (`Method.sections`, e.g. `lcm:`), and `load_config` builds those of `train.method` from the method
registry it is given. A notebook builds the same dataclasses the command line loads:
    from workbench.methods import load_config        # this module's load_config with the registered methods
    cfg = load_config("experiments/toy/teacher.yaml", overrides=["train.steps=200"])
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and key."""


# Settings that name one option of a registry: kept equal to it by tests/test_config.py (the registries live in
# higher layers, which this module may not import). The loader refuses any other value, naming the key.
Preset = Literal["toy", "toy-no-positions", "tiny-wan", "wan2.1-fun-1.3b-inp", "tiny-cogvideox",
                 "cogvideox-5b-i2v"]   # models.wan.PRESETS, models.cogvideox.PRESETS
WAN_PRESETS = ("toy", "toy-no-positions", "tiny-wan", "wan2.1-fun-1.3b-inp")   # models.wan.PRESETS: Wan's blocks
SamplerName = Literal["euler", "consistency"]                                     # sampling.SAMPLERS
Timesteps = Literal["uniform", "logit_normal"]

# A config class may set RANGES = {field: (min, max)} (None = open): load_config refuses values outside. It may
# define problems(self) -> {field: what is wrong} for rules across its fields, checked after RANGES.


@dataclass
class ToySpec:
    """The toy benchmark's clips (data/synthetic.py renders them)."""
    size: int = 24                      # frame height = width, pixels
    frames: int = 8                     # T
    objects: tuple[int, int] = (1, 1)   # min, max objects per clip
    object_size: tuple[int, int] = (8, 8)  # min, max side in pixels (inclusive)
    speeds: tuple[int, ...] = (4,)      # pixels per frame; the caption names the speed only if several
    grid: int = 4                       # start positions are multiples of this (1 = anywhere)
    p_state_direction: float = 0.5      # chance the caption states the direction
    p_state_speed: float = 0.5          # chance the caption states the speed (when there are several)


@dataclass
class VideoFolderSpec:
    csv: str = ""                  # OpenVid-1M style CSV; paths in it are relative to `root`
    root: str = ""                 # folder of the mp4 clips (default: the CSV's folder)
    path_column: str = "video"     # column with the clip's file name
    caption_column: str = "caption"
    frames: int = 8                # T frames read per clip
    stride: int = 1                # take every stride-th frame
    height: int = 24               # resize the short side, then centre-crop to height x width
    width: int = 24
    RANGES = {"frames": (1, None), "stride": (1, None), "height": (1, None), "width": (1, None)}


@dataclass
class DataConfig:
    kind: Literal["toy", "videos"] = "toy"  # "toy" (procedural, embedded) or "videos" (CSV of mp4 files)
    toy: ToySpec = field(default_factory=ToySpec)
    videos: VideoFolderSpec = field(default_factory=VideoFolderSpec)
    preferences: str = ""          # TA: train on this preference-pair folder (data/preferences.py); test split unchanged
    cache: str = ""                # folder of `python -m workbench data cache`: train on cached encoder outputs ("" = off)
    cache_pixels: Literal["float32", "uint8"] = "float32"  # the cache's train pixels (DA's real clips): float32 = bitwise
                                   # the live clips; uint8 = a quarter of the disk, pixels rounded to the 1/127.5 grid
    train_size: int = 1_000_000    # clips in the train split (toy: distinct seeds)
    test_size: int = 256           # clips in the test split
    validation_size: int = 0       # clips in the validation split, for choosing settings (0 = none): the toy's own
                                   # seeds (1.5e9..); a CSV's rows just before its test rows, taken out of train
    RANGES = {"train_size": (1, None), "test_size": (1, None), "validation_size": (0, None)}


@dataclass
class LoraConfig:
    """A LoRA on the transformer (peft): any method trains only it when rank > 0, and every loader adds it."""
    rank: int = 0                  # 0 = no LoRA
    alpha: float = 16.0
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
    RANGES = {"rank": (0, None), "alpha": (0, None)}


def blockwise_problem(cfg) -> dict[str, str]:
    """The block-wise JVP (Algorithm 2, models/jvp.py) is written for Wan's blocks: refused for another family
    (a method that computes dF/dt checks it: CCD, DA on CCD)."""
    if cfg.distill.jvp.endswith("blockwise") and cfg.model.preset not in WAN_PRESETS:
        return {"distill.jvp": f"{cfg.distill.jvp}: the block-wise JVP (Algorithm 2) is written for Wan's blocks, and "
                               f"model.preset={cfg.model.preset} is not Wan; use distill.jvp=whole (with "
                               f"distill.jvp_attention=chunked)"}
    return {}


def prediction_problem(prediction: str, vp_schedule: str) -> str | None:
    """What is wrong with a network predicting `prediction` on the flow path (no `vp_schedule`) or a VP one."""
    if vp_schedule and prediction == "velocity":
        return "a VP network (model.vp_schedule set) predicts epsilon, v or x0, not velocity"
    if not vp_schedule and prediction in ("epsilon", "v"):
        return f"{prediction} is a VP prediction: set model.vp_schedule (a diffusers scheduler_config.json)"
    return None


@dataclass
class ModelConfig:
    preset: Preset = "toy"         # "toy", "tiny-wan" / "tiny-cogvideox" (tests), "wan2.1-fun-1.3b-inp" or
                                   # "cogvideox-5b-i2v" (models.PRESETS, models.COGVIDEOX_PRESETS)
    weights: str = ""              # safetensors file of the transformer (e.g. the shipped teacher); "" = preset init
    transformer_path: str = ""     # local diffusers folder of WanTransformer3DModel (Wan scale)
    vae_path: str = ""             # local folder of AutoencoderKLWan ("" = pixel codec)
    text_encoder_path: str = ""    # local folder of UMT5EncoderModel + tokenizer ("" = toy text encoder)
    image_encoder_path: str = ""   # local folder of CLIPVisionModel + processor ("" = no image tokens)
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights dtype of frozen parts: float32 or bfloat16
    prediction: Literal["velocity", "x0", "epsilon", "v"] = "velocity"  # what the transformer outputs: on the flow path
                                   # "velocity" (Eq. 2) or "x0" (F = (x_t - x0) / t); on a VP path (vp_schedule)
                                   # "epsilon", "v" or "x0", bridged to the velocity by workbench/vp.py
    vp_schedule: str = ""          # a diffusion (VP) network: its diffusers scheduler_config.json (the betas);
                                   # "" = a flow network
    reparameterize: bool = False   # start from model.weights trained on another path or prediction (a flow student
                                   # of a VP teacher, a VP teacher from a flow one): refused unless set, as their
                                   # function is not this network's until it has trained
    lora: LoraConfig = field(default_factory=LoraConfig)

    def problems(self) -> dict[str, str]:
        problem = prediction_problem(self.prediction, self.vp_schedule)
        return {"prediction": problem} if problem else {}


@dataclass
class SampleConfig:
    """How the model is sampled; saved with it, so `sample`, `eval`, notebooks and the app sample it alike."""
    sampler: SamplerName = "euler"  # a name in workbench.sampling.SAMPLERS: "euler" or "consistency"
    steps: int = 25                # steps (number of network evaluations without guidance)
    shift: float = 1.0             # timestep shift of the grid (1 = uniform)
    guidance: float = 1.0          # classifier-free guidance scale (1 = off)
    RANGES = {"steps": (1, None), "shift": (1e-6, None)}


@dataclass
class DistillConfig:
    """Consistency distillation from a frozen teacher; the student starts from `model.weights`. A core section: every
    distillation method reads it (methods/base.py: Distillation), and a pipeline stage's `teacher:` sets it."""
    teacher: str = ""                # safetensors of F_pretrain ("" = model.weights: student and teacher start equal)
    teacher_dtype: Literal["float32", "bfloat16"] = "float32"  # the frozen teacher's weights: "float32" or "bfloat16" (halves it; diffusers'
                                     # fp32 modules kept); a teacher that is a role's LoRA base (DMD2) stays fp32
    timesteps: Timesteps = "logit_normal"  # t sampler (Algorithm 1 line 4): "logit_normal" or "uniform"
    p_mean: float = -0.6             # logit-normal location P_mean
    p_std: float = 1.4               # logit-normal scale P_std
    guidance: float = 1.0            # CFG scale of the teacher's dx/dt (distilled into the student; 1 = off)
    tangent_warmup: int = 1000       # H: r = min(1, step / H) scales t dF/dt (Eq. 9)
    tangent_norm_c: float = 0.1      # g <- g / (||g|| + c), per sample (Algorithm 1 line 8)
    jvp: Literal["blockwise", "whole", "finite_difference", "reverse", "reverse_blockwise"] = "blockwise"
                                     # dF/dt by "blockwise" (Alg. 2), "whole", "finite_difference", "reverse", "reverse_blockwise"
    jvp_attention: Literal["math", "chunked"] = "chunked"  # attention under forward-mode AD: "chunked" (one-pass blocked JVP, O(N) memory) or "math" SDPA
    jvp_chunk: int = 1024            # key chunk of the chunked attention JVP (query rows: the chunk or more)
    fd_eps: float = 1e-4             # finite-difference step in t (Wan embeds 1000 t: 1e-3 is already 1 rad at its top frequency)
    delta_t: float = 0.05            # DCD only: the teacher's Euler step between adjacent times (Eq. 3)
    target_decay: float = 0.95       # mu of the target network theta^- (Algorithm 1 line 11; the paper's 0.95)
    RANGES = {"p_std": (0, None), "tangent_warmup": (0, None), "tangent_norm_c": (0, None), "jvp_chunk": (1, None),
              "fd_eps": (1e-9, 0.5), "delta_t": (1e-6, 1), "target_decay": (0, 1)}

    def problems(self) -> dict[str, str]:
        if self.jvp.startswith("reverse") and self.jvp_attention == "chunked":
            return {"jvp_attention": f"the chunked attention JVP is forward-mode only; distill.jvp={self.jvp} needs "
                                     f"distill.jvp_attention=math"}
        return {}


@dataclass
class TrainConfig:
    method: str = "flow_matching"  # a name in workbench.methods.METHODS (an open registry: checked at load, with the
                                   # sections the method declares; a pipeline checks every stage's at load)
    steps: int = 1000              # optimizer steps
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100        # linear warmup of the learning rate
    schedule: Literal["constant", "cosine"] = "cosine"  # "constant" or "cosine" (to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0         # max global grad norm (0 = off)
    ema_decay: float = 0.999       # EMA of the exported network (samples, export); CCD's target is distill.target_decay
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate: "no", "bf16" or "fp16"
    seed: int = 0
    log_every: int = 10            # steps between metrics.jsonl rows
    ckpt_every: int = 500          # steps between checkpoints
    keep_ckpts: int = 2            # complete checkpoints kept
    sample_every: int = 0          # steps between sample grids (0 = only at the end)
    sample_num: int = 4            # clips per sample grid
    sample_steps: tuple[int, ...] = (2, 4, 8, 25)
    num_workers: int = 0           # DataLoader workers
    fsdp: bool = False             # several processes: FSDP2 full shard of each trained role and its EMA per Wan
                                   # block + root (train/fsdp.py); frozen networks stay whole; one process: no-op
    activation_checkpointing: bool = False  # trained transformers recompute each block in backward (DDP or FSDP)
    log_with: Literal["none", "tensorboard"] = "none"  # also log each metrics row to TensorBoard (accelerate's tracker,
                                   # in <run>/tensorboard/: `tensorboard --logdir <run>/tensorboard`)
    RANGES = {"steps": (1, None), "batch_size": (1, None), "lr": (0, None), "weight_decay": (0, None),
              "warmup_steps": (0, None), "min_lr_ratio": (0, 1), "grad_clip": (0, None), "ema_decay": (0, 1),
              "log_every": (1, None), "ckpt_every": (1, None), "keep_ckpts": (1, None), "sample_every": (0, None),
              "sample_num": (1, None), "num_workers": (0, None)}


@dataclass
class Config:
    """The core sections, and `sections`: the settings of train.method, each under its YAML name (`lcm:`), read as
    `cfg.lcm` as a core section is (`--set lcm.huber_c=...` sets it). load_config fills them from the method
    registry; a Config built by hand has none, and building the method then names the one missing."""
    name: str = "run"
    out: str = "runs/run"          # run folder: metrics.jsonl, checkpoints/, samples/
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sections: dict[str, Any] = field(default_factory=dict)  # train.method's sections: YAML name -> its dataclass

    def __getattr__(self, name: str):  # only for names that are not attributes: a method's section
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        if name.startswith("__") or sections is None:
            raise AttributeError(name)
        raise AttributeError(f"config has no section {name!r}: train.method {self.train.method!r} reads "
                             f"{', '.join(sections) or 'no section of its own'} (workbench.methods.load_config "
                             f"builds them)")


def core_sections() -> tuple[str, ...]:
    """The top-level keys of every config (Config's fields but `sections`); a method's section takes another name."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.name != "sections")


def _check(value, tp, where: str):
    """Convert `value` to type `tp` or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, where)
    if origin is typing.Literal:  # one option of a list: refused here, not where it is first used hours later
        options = typing.get_args(tp)
        if value not in options or type(value) is not type(options[0]):
            quote = "; YAML reads an unquoted no/yes/off/on as a boolean: quote it" if isinstance(value, bool) else ""
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, options))}, got {value!r}{quote}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        return _check(value, next(a for a in typing.get_args(tp) if a is not type(None)), where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else object
        return origin(_check(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            number = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
        if not math.isfinite(number):  # NaN passes every range check, and trains NaN weights
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is dict and isinstance(value, dict):
        return value
    raise ConfigError(f"{where}: unsupported value {value!r} for type {tp}")


def _from_dict(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})".lstrip("."))
    obj = cls(**{k: _check(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()})
    for key, (lo, hi) in getattr(cls, "RANGES", {}).items():  # numeric fields with a valid range
        value = getattr(obj, key)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = " and ".join(b for b in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}") if b)
            raise ConfigError(f"{where}.{key}: expected a value {bounds}, got {value!r}".lstrip("."))
    for key, problem in (obj.problems() if hasattr(obj, "problems") else {}).items():  # rules across fields
        raise ConfigError(f"{where}.{key}: {problem}".lstrip("."))
    return obj


def _set(data: dict, dotted: str, value) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
    node[leaf] = value


def _read_with_overrides(path: str | Path | None, overrides: list[str]) -> tuple[dict, str]:
    """(the YAML file's mapping, or {}, with `key.sub=value` overrides set in it; the source errors name)."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = _read_yaml(Path(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        _set(data, key.strip(), _parse_yaml(raw, f"--set {item}"))
    return data, source


def load_dataclass(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Any config dataclass from a YAML file (or its defaults) plus overrides; errors name the file and key."""
    data, source = _read_with_overrides(path, overrides)
    try:
        return _from_dict(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_section(path: str | Path, name: str, cls):
    """One section of a config file, checked alone (its defaults where the file has none): for a caller below the
    methods that needs only a core section, e.g. a saved run's `model`."""
    data = _read_yaml(Path(path))
    try:
        return _check(data.get(name, {}), cls, name)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a config needs none, and nested aliases (a "billion laughs") expand to
    more values than memory holds."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed in a config; "
                                 f"write the value out")
        return super().compose_node(parent, index)


def _parse_yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None


def _read_yaml(path: Path) -> dict:
    """A config file's top-level mapping, or a ConfigError naming the file and what was expected."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a YAML config file")
    try:
        data = _parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); expected a YAML config file") from None
    if data is None:
        raise ConfigError(f"{path}: empty config file; expected a mapping of sections (e.g. train:, model:)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (), *, methods: Mapping[str, type]) -> Config:
    """Config from a YAML file (or the defaults) plus `key.sub=value` overrides (values parsed as YAML), with the
    sections of train.method. `methods` is the method registry (name -> class whose `sections` maps YAML section
    names to settings dataclasses); workbench.methods.load_config passes workbench.methods.METHODS.

    A section of another registered method (every section a run saved before methods declared their own) is
    checked as strictly and left out: the config holds the core sections and train.method's."""
    if path is not None and Path(path).is_file() and "stages" in _read_yaml(Path(path)):
        raise ConfigError(f"{path}: a pipeline config (it has stages:); run it with `python -m workbench pipeline`")
    data, source = _read_with_overrides(path, overrides)
    try:
        cfg = _config(data, methods)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    if cfg.train.batch_size > cfg.data.train_size:  # e.g. a typo of 1e9: refused now, not by a MemoryError later
        raise ConfigError(f"{path or 'defaults'}: train.batch_size: {cfg.train.batch_size} clips a step, more than "
                          f"the train split holds (data.train_size {cfg.data.train_size})")
    return cfg


def _config(data: dict, methods: Mapping[str, type]) -> Config:
    core = core_sections()
    registered = {name: cls for method in methods.values() for name, cls in method.sections.items()}
    for key in data:  # first, as _from_dict does: an unknown top-level key is named before any value
        if key not in core and key not in registered:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(core))}, or a method's section: "
                              f"{', '.join(sorted(registered))})")
    cfg = _from_dict(Config, {k: v for k, v in data.items() if k in core}, "")
    if cfg.train.method not in methods:
        raise ConfigError(f"train.method: unknown method {cfg.train.method!r} (known: {', '.join(methods)})")
    own = methods[cfg.train.method].sections
    given = {k: _check(v, registered[k], k) for k, v in data.items() if k not in core}  # every one checked
    cfg.sections = {name: given[name] if name in given else cls() for name, cls in own.items()}
    rules = getattr(methods[cfg.train.method], "config_problems", None)   # the method's rules across sections
    for key, problem in (rules(cfg) if rules else {}).items():
        raise ConfigError(f"{key}: {problem}")
    return cfg


def to_dict(cfg) -> dict:
    """Plain dict (tuples as lists) for JSON/YAML; a Config's method sections at the top level, under their names."""
    def plain(x):
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    d = plain(dataclasses.asdict(cfg))
    if isinstance(cfg, Config):
        d.update(d.pop("sections"))
    return d


# Keys that decide what is logged, kept or drawn, not what is trained: a resumed or reused run may differ in them.
UNTRAINED_KEYS = {"out", "train.log_every", "train.ckpt_every", "train.keep_ckpts", "train.sample_every",
                  "train.sample_num", "train.sample_steps", "train.num_workers",
                  "train.fsdp", "train.activation_checkpointing", "train.log_with",  # how the work is spread: equal up to rounding
                  "data.cache"}                   # the encoders' outputs read back: bitwise the live ones on CPU


def flat(d: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


def trained_changes(saved: Config, new: Config) -> list[str]:
    """'key: saved -> new' for every key that changes what is trained (all but UNTRAINED_KEYS)."""
    a, b = flat(to_dict(saved)), flat(to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in UNTRAINED_KEYS and a.get(k) != b.get(k)]


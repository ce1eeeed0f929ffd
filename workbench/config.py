"""Typed configs for every stage, loaded from YAML. Unknown keys and wrong types fail loudly.

A notebook builds the same dataclasses the command line loads:
    cfg = load_config("experiments/toy/teacher.yaml", overrides=["train.steps=200"])
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and key."""


# Settings that name one option of a registry: kept equal to it by tests/test_config.py (the registries live in
# higher layers, which this module may not import). The loader refuses any other value, naming the key.
Preset = Literal["toy", "toy-no-positions", "tiny-wan", "wan2.1-fun-1.3b-inp"]   # models.wan.PRESETS
SamplerName = Literal["euler", "consistency"]                                     # sampling.SAMPLERS
Timesteps = Literal["uniform", "logit_normal"]

# A config class may set RANGES = {field: (min, max)} (None = open): load_config refuses values outside.


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
    train_size: int = 1_000_000    # clips in the train split (toy: distinct seeds)
    test_size: int = 256           # clips in the test split
    RANGES = {"train_size": (1, None), "test_size": (1, None)}


@dataclass
class LoraConfig:
    """A LoRA on the transformer (peft): any method trains only it when rank > 0, and every loader adds it."""
    rank: int = 0                  # 0 = no LoRA
    alpha: float = 16.0
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
    RANGES = {"rank": (0, None), "alpha": (0, None)}


@dataclass
class ModelConfig:
    preset: Preset = "toy"         # "toy", "tiny-wan" (tests) or "wan2.1-fun-1.3b-inp" (models.PRESETS)
    weights: str = ""              # safetensors file of the transformer (e.g. the shipped teacher); "" = preset init
    transformer_path: str = ""     # local diffusers folder of WanTransformer3DModel (Wan scale)
    vae_path: str = ""             # local folder of AutoencoderKLWan ("" = pixel codec)
    text_encoder_path: str = ""    # local folder of UMT5EncoderModel + tokenizer ("" = toy text encoder)
    image_encoder_path: str = ""   # local folder of CLIPVisionModel + processor ("" = no image tokens)
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights dtype of frozen parts: float32 or bfloat16
    prediction: Literal["velocity", "x0"] = "velocity"  # what the transformer outputs: "velocity" (Eq. 2) or "x0" (F = (x_t - x0) / t)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SampleConfig:
    """How the model is sampled; saved with it, so `sample`, `eval`, notebooks and the app sample it alike."""
    sampler: SamplerName = "euler"  # a name in workbench.sampling.SAMPLERS: "euler" or "consistency"
    steps: int = 25                # steps (number of network evaluations without guidance)
    shift: float = 1.0             # timestep shift of the grid (1 = uniform)
    guidance: float = 1.0          # classifier-free guidance scale (1 = off)
    RANGES = {"steps": (1, None), "shift": (1e-6, None)}


@dataclass
class FlowMatchingConfig:
    timesteps: Timesteps = "logit_normal"  # "uniform" or "logit_normal"
    p_mean: float = 0.0              # logit-normal location
    p_std: float = 1.0               # logit-normal scale
    caption_dropout: float = 0.1     # chance to train on the empty caption (enables guidance)
    RANGES = {"p_std": (0, None), "caption_dropout": (0, 1)}


@dataclass
class DistillConfig:
    """Consistency distillation from a frozen teacher; the student starts from `model.weights`."""
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
    jvp_attention: Literal["math", "chunked"] = "math"  # attention under forward-mode AD: "math" SDPA or "chunked" (O(N x chunk) memory)
    jvp_chunk: int = 1024            # query/key chunk of the chunked attention JVP
    fd_eps: float = 1e-4             # finite-difference step in t (Wan embeds 1000 t: 1e-3 is already 1 rad at its top frequency)
    delta_t: float = 0.05            # DCD only: the teacher's Euler step between adjacent times (Eq. 3)
    target_decay: float = 0.95       # mu of the target network theta^- (Algorithm 1 line 11; the paper's 0.95)
    RANGES = {"p_std": (0, None), "tangent_warmup": (0, None), "tangent_norm_c": (0, None), "jvp_chunk": (1, None),
              "fd_eps": (1e-9, 0.5), "delta_t": (1e-6, 1), "target_decay": (0, 1)}


@dataclass
class LCMConfig:
    """Latent consistency distillation (Luo et al. 2023; diffusers examples/consistency_distillation): the teacher's
    one Euler step on a grid as the ODE solver, consistency to the target network (distill.target_decay) there.
    Guidance is fixed (distill.guidance) and distilled in: Wan has no guidance input to condition on."""
    grid: int = 50                   # N points of the teacher's schedule, t_n = n / N (diffusers: 50 DDIM steps)
    skip: int = 1                    # k: the solver jumps from t_n to t_{n-k} (the skipping-step grid)
    huber_c: float = 0.001           # pseudo-Huber sqrt(d^2 + c^2) - c per element; our units are ~[-1, 1] as SD latents
    RANGES = {"grid": (1, 1000), "skip": (1, None), "huber_c": (0, None)}


@dataclass
class PCMConfig:
    """Phased consistency (Wang et al. 2024; the official SD3 flow-matching code): K phases with edges on the
    teacher's grid, consistency within a phase to its lower edge, the online student (no_grad) as the target."""
    phases: int = 4                  # K; the model samples with Euler on the K + 1 phase edges (one model per K)
    grid: int = 48                   # N points of the teacher's schedule; K must divide N (48: K = 1, 2, 3, 4, 6, 8)
    skip: int = 1                    # solver step in grid intervals (not across a phase edge)
    loss: Literal["huber", "l2"] = "huber"  # "huber" (pseudo-Huber with huber_c, the official default) or "l2" (MSE)
    huber_c: float = 0.001           # pseudo-Huber c (0 = L1-like)
    target: Literal["online", "ema"] = "online"  # "online": the student under no_grad (the official code); "ema": distill.target_decay
    adversarial: bool = False        # the official consistency-GAN: heads on the frozen teacher's block features
    adv_weight: float = 0.1          # its generator weight (the official SD3 run.sh)
    adv_lr: float = 1.0e-5           # its heads' learning rate (run.sh)
    adv_blocks: tuple[int, ...] = ()  # teacher blocks read, one head each (() = every block, as the official code)
    adv_head_width: int = 64
    RANGES = {"phases": (1, None), "grid": (1, 1000), "skip": (1, None), "huber_c": (0, None), "adv_weight": (0, None),
              "adv_lr": (0, None), "adv_head_width": (1, None)}


@dataclass
class AdversarialConfig:
    """Distribution alignment (DA): hinge GAN on real clips over frozen features (Eq. 10)."""
    distill: Literal["ccd", "dcd", "none"] = "ccd"  # the distillation loss DA is added to: "ccd", "dcd" or "none" (DA alone)
    lambda_adv: float = 0.01         # weight of the generator's hinge loss
    warmup: int = 1000               # N_warmup: distillation-only steps before DA starts
    feature_net: str = "toy"         # frozen DINOv2: "toy" (shipped experiments/toy/dino) or a local Dinov2Model folder
    layers: tuple[int, ...] = (2, 4)  # hidden states (0 = embeddings) read by one spatial and one temporal head each
    head_width: int = 64             # channels of each discriminator head
    temporal_heads: bool = True      # add temporal heads over the frame sequence (False: spatial heads only)
    motion_layers: tuple[int, ...] = ()  # hidden states read by a motion head each: per patch, the change of its token
                                     # between consecutive frames (not in the paper; () = off). 0 = the patch
                                     # embeddings, local to each patch, so a still background changes by exactly 0
    lr: float = 0.0                  # discriminator learning rate (0 = train.lr)
    t_min: float = 0.0               # 0: D reads x0_hat at the distillation's t; > 0: at its own t ~ U[t_min, 1]
    lambda_first: float = 0.0        # weight of ||x0_hat's frame 0 - the given frame's latent||^2 at D's x0_hat
                                     # (not in the paper; 0 = off)
    RANGES = {"lambda_adv": (0, None), "warmup": (0, None), "head_width": (1, None), "lr": (0, None),
              "t_min": (0, 1), "lambda_first": (0, None)}


@dataclass
class OSVConfig:
    """OSV (Mao et al. 2025; no public code, our implementation): a hinge GAN against real clips (adversarial.*:
    features, heads, lr, lambda_adv), alone for the first stage1_steps, then with LCM's consistency loss (lcm.*)."""
    stage1_steps: int = 250          # stage 1 (GAN only) length; stage 2 (consistency + GAN) runs to train.steps
    RANGES = {"stage1_steps": (0, None)}


@dataclass
class DMD2Config:
    """DMD2 (Yin et al. 2024; tianweiy/DMD2, main/sd_guidance.py): distribution matching against a trainable fake
    score (a copy of the teacher trained by flow matching on the student's detached samples), a GAN classifier
    head on the fake score's block features, the two time-scale rule and backward simulation."""
    student_every: int = 5           # the student updates every 5th step, the fake score every step (dfake_gen_update_ratio)
    fake_lr: float = 0.0             # the fake score's (and its head's) lr (0 = train.lr; the official SD recipes use the same lr)
    denoising_steps: int = 4         # the student's step list = schedule(denoising_steps) (backward simulation; 1 = one step)
    min_t: float = 0.02              # score times t ~ U[min_t, max_t] (min/max_step_percent)
    max_t: float = 0.98
    gan_weight: float = 5.0e-3       # the generator's GAN weight (gen_cls_loss_weight, SDXL recipe)
    gan_fake_weight: float = 1.0e-2  # the classifier's weight in the fake score's loss (guidance_cls_loss_weight)
    gan_block: int = -1              # the fake score's transformer block the classifier head reads (-1 = the middle one)
    fake_lora_rank: int = 0          # > 0: the fake score is a LoRA of this rank on the teacher's own frozen weights
                                     # (one base in memory; model.lora's alpha and targets), 0: a full trainable copy
    RANGES = {"student_every": (1, None), "fake_lr": (0, None), "denoising_steps": (1, None), "min_t": (0, 1),
              "max_t": (0, 1), "gan_weight": (0, None), "gan_fake_weight": (0, None), "fake_lora_rank": (0, None)}


@dataclass
class CDMConfig:
    """Continuous-time distribution matching (byliutao/cdm: scripts/train.py, cdm/training/losses.py; defaults from
    config/config.py, SD3 preset where it overrides): a random-length continuous student rollout, a fake teacher
    trained on its detached x0 and merged with the student, CFG augmentation + on- and off-trajectory DM."""
    update_ratio: int = 5            # one student step per 5 fake-teacher steps (student.update_ratio; SD3 preset 2)
    fake_lr: float = 5.0e-6          # the fake teacher's lr (fake_teacher.full_learning_rate, SD3; 0 = train.lr)
    fake_ema_decay: float = 0.999    # FT <- student EMA merge after each FT step (fake_teacher.ema_from_student_decay)
    min_steps: int = 1               # rollout length n ~ U{min_steps..max_steps} (sample.random_sigma_num_steps_min)
    max_steps: int = 28              # (sample.random_sigma_num_steps_max)
    sigma_lo: float = 0.25           # inner rollout times ~ U(sigma_lo, sigma_hi), sorted descending (random_sigma_min)
    sigma_hi: float = 0.95           # (random_sigma_max)
    t_min: float = 0.02              # every sampled sigma is clamped to [t_min, t_max] (sigma_min, sigma_max)
    t_max: float = 0.98
    guidance: float = 7.0            # g of CFG augmentation (loss.cfg.guidance_scale); 0 = CA off
    norm_min: float = 0.1            # floor of the per-sample normaliser of every push (norm_clip_min)
    ca_weight: float = 1.0           # loss.cfg.weight
    dm_weight: float = 1.0           # loss.ddm.weight (on-trajectory DM)
    cdm_weight: float = 1.0          # loss.cdm.weight (off-trajectory DM)
    RANGES = {"update_ratio": (1, None), "fake_lr": (0, None), "fake_ema_decay": (0, 1), "min_steps": (1, None),
              "max_steps": (1, 1000), "sigma_lo": (0, 1), "sigma_hi": (0, 1), "t_min": (0, 1), "t_max": (0, 1),
              "guidance": (0, None), "norm_min": (0, None), "ca_weight": (0, None), "dm_weight": (0, None),
              "cdm_weight": (0, None)}


@dataclass
class DPOConfig:
    """Trajectory alignment (TA): Flow-DPO (Eq. 11) + reflow regulariser on winners; trains the LoRA of model.lora."""
    beta: float = 2500.0             # beta of Eq. (11); errors are per-element means
    error: Literal["velocity", "x0"] = "velocity"  # "velocity": ||v - F||^2 (Eq. 11); "x0": ||x0 - x0_hat||^2 = t^2 ||v - F||^2
    condition_frame: bool = False    # winner and loser take the condition's latent as frame 0 (the given frame)
    noise: Literal["fresh", "paired"] = "fresh"  # x1 of x_t: "fresh" (a new draw each step) or "paired" (the noise the pair was
                                     # sampled from: reflow's coupling, Liu et al. 2022; sampled winners only)
    region: Literal["all", "difference"] = "all"  # DPO errors over "all" elements or weighted by |x0^w - x0^l| ("difference": the
                                     # preference speaks where the pair differs; reflow still sees every element)
    lambda_rf: float = 2.0           # weight of the reflow loss ||v_w - v_theta(x_t^w, t)||^2 (0 = DPO alone)
    lambda_keep: float = 0.0         # weight of ||F - F_ref||^2 where winner and loser agree (not in the paper; 0 = off)
    lambda_first: float = 0.0        # weight of ||x0_hat's frame 0 - the given frame's latent||^2 (not in the paper)
    timesteps: Timesteps = "uniform"  # t sampler: "uniform" or "logit_normal"
    p_mean: float = 0.0
    p_std: float = 1.0
    RANGES = {"beta": (0, None), "lambda_rf": (0, None), "lambda_keep": (0, None), "lambda_first": (0, None),
              "p_std": (0, None)}


@dataclass
class TrainConfig:
    method: str = "flow_matching"  # a name in workbench.methods.METHODS (an open registry: checked as the method
                                   # is built, before any work; a pipeline checks every stage's at load)
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
    RANGES = {"steps": (1, None), "batch_size": (1, None), "lr": (0, None), "weight_decay": (0, None),
              "warmup_steps": (0, None), "min_lr_ratio": (0, 1), "grad_clip": (0, None), "ema_decay": (0, 1),
              "log_every": (1, None), "ckpt_every": (1, None), "keep_ckpts": (1, None), "sample_every": (0, None),
              "sample_num": (1, None), "num_workers": (0, None)}


@dataclass
class Config:
    name: str = "run"
    out: str = "runs/run"          # run folder: metrics.jsonl, checkpoints/, samples/
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    flow_matching: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    lcm: LCMConfig = field(default_factory=LCMConfig)
    pcm: PCMConfig = field(default_factory=PCMConfig)
    osv: OSVConfig = field(default_factory=OSVConfig)
    dmd2: DMD2Config = field(default_factory=DMD2Config)
    cdm: CDMConfig = field(default_factory=CDMConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)


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
    return obj


def _set(data: dict, dotted: str, value) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
    node[leaf] = value


def load_dataclass(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Any config dataclass from a YAML file (or its defaults) plus overrides; errors name the file and key."""
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
    try:
        return _from_dict(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


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


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Config from a YAML file (or the defaults) plus `key.sub=value` overrides (values parsed as YAML)."""
    if path is not None and Path(path).is_file() and "stages" in _read_yaml(Path(path)):
        raise ConfigError(f"{path}: a pipeline config (it has stages:); run it with `python -m workbench pipeline`")
    cfg = load_dataclass(Config, path, overrides)
    if cfg.train.batch_size > cfg.data.train_size:  # e.g. a typo of 1e9: refused now, not by a MemoryError later
        raise ConfigError(f"{path or 'defaults'}: train.batch_size: {cfg.train.batch_size} clips a step, more than "
                          f"the train split holds (data.train_size {cfg.data.train_size})")
    return cfg


def saved_config(weights_folder: str | Path) -> Path | None:
    """The config.yaml a run saved for the weights in this folder: beside them (an exported model folder) or in
    the run folder of a checkpoint (<run>/checkpoints/step-N/); None if neither exists."""
    folder = Path(weights_folder)
    return next((p for p in (folder / "config.yaml", folder.parent.parent / "config.yaml") if p.is_file()), None)


def to_dict(cfg) -> dict:
    """Plain dict (tuples as lists) for JSON/YAML."""
    def plain(x):
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(cfg))


# Keys that decide what is logged, kept or drawn, not what is trained: a resumed or reused run may differ in them.
UNTRAINED_KEYS = {"out", "train.log_every", "train.ckpt_every", "train.keep_ckpts", "train.sample_every",
                  "train.sample_num", "train.sample_steps", "train.num_workers",
                  "train.fsdp", "train.activation_checkpointing"}  # how the work is spread: equal up to rounding


def flat(d: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


def trained_changes(saved: Config, new: Config) -> list[str]:
    """'key: saved -> new' for every key that changes what is trained (all but UNTRAINED_KEYS)."""
    a, b = flat(to_dict(saved)), flat(to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in UNTRAINED_KEYS and a.get(k) != b.get(k)]


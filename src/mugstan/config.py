"""Typed configuration for every mugstan experiment.

An experiment is one YAML file with four sections, each typed by a dataclass below:

    model:  backbone x temporal module x head (or classifier)      -> ModelConfig
    data:   dataset format, annotation files, sampling, transforms -> DataConfig
    train:  optimisation, precision, checkpointing, logging        -> TrainConfig
    eval:   retrieval / recognition protocol                       -> EvalConfig

Configs are OmegaConf structured configs: unknown keys and wrong types are errors, and dotted
overrides from the command line (``train.lr=1e-6``) are checked against the same types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


@dataclass
class STANConfig:
    """The spatial-temporal auxiliary branch (methods.md section 4)."""

    depth: int = 4  # K: branch levels, fed by the last K CLIP vision layers
    time_module: str = "self"  # "self" (temporal self-attention) | "conv" (3D convolution)
    drop_path: float = 0.1  # drop-path rates are linspace(0, drop_path, depth)
    max_frames: int = 64  # size of the learned temporal embedding; caps T


@dataclass
class ModelConfig:
    """Backbone x temporal module x head. Built by ``mugstan.models.build_model``."""

    # Backbone: an open_clip model name ("ViT-B-32", "ViT-B-16", "ViT-L-14", or a mugstan tiny
    # config such as "mugstan-tiny") and where its weights come from: an open_clip pretrained
    # tag ("openai", "laion2b_s34b_b79k", downloaded and cached by open_clip) and/or a local
    # file (OpenAI .pt, HuggingFace CLIPModel directory, open_clip-layout safetensors).
    backbone: str = "ViT-B-32"
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    # Temporal module over CLIP: "meanP" | "seqTransf" | "tdb_tab" | "stan"
    temporal: str = "meanP"
    # Head: "cosine" (dual encoder; tdb_tab adds CLIP2Video's TAB fusion) | "mug"
    head: str = "cosine"
    task: str = "retrieval"  # "retrieval" | "recognition"
    stan: STANConfig = field(default_factory=STANConfig)
    seq_layers: int = 4  # seqTransf / TDB temporal transformer depth
    tab_centers: int = 5  # CLIP2Video TAB centres K (7 for VATEX)
    tab_weight: float = 0.5  # w in S = w * S_global + (1 - w) * S_tab
    clip2video_compat: bool = False  # reproduce CLIP2Video's head-major mask expansion
    mug_mode: str = "simple"  # "simple" | "full"
    mug_compat: bool = False  # reproduce the reference's padded-word leak in "full" mode
    mug_lambda: float = 100.0
    # Temperature: None -> learned logit scale (CLIP's, clamped to <= 100); a number tau ->
    # fixed scale 1 / tau (STAN: 0.01 MSR-VTT B/32, 0.02 B/16, 0.05 DiDeMo).
    temperature: Optional[float] = None
    loss_reduction: str = "mean"  # symmetric InfoNCE: "mean" or "sum" of the two directions
    # Recognition
    classifier: str = "text"  # "text" (initialised from class-name prompts) | "linear"
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    prompt_templates: list[str] = field(default_factory=lambda: ["a video of {}."])
    context_length: int = 32  # text tokens L, EOT always kept
    grad_checkpointing: bool = False
    freeze_backbone: bool = False


@dataclass
class DataConfig:
    """Where the data is and how clips are sampled and transformed (data.md)."""

    # Format name (see mugstan.data.datasets): "msrvtt", "msrvtt_json", "didemo", "lsmdc",
    # "msvd", "vatex", "activitynet", "video_list", "kinetics_csv", "ssv2", "webvid", "cc3m",
    # "jsonl"
    dataset: str = "jsonl"
    root: str = ""  # folder holding the videos (paths in annotations are relative to it)
    train_ann: Optional[str] = None
    val_ann: Optional[str] = None
    test_ann: Optional[str] = None
    # Format-specific extra files, e.g. {"data_json": "MSRVTT_data.json"},
    # {"class_names": "classInd.txt"}, {"captions": "raw-captions.pkl"}.
    extra: dict[str, str] = field(default_factory=dict)
    num_frames: int = 12
    test_num_frames: Optional[int] = None  # defaults to num_frames
    sampler: str = "segment"  # "segment" | "dense"
    dense_stride: int = 4
    image_size: int = 224
    resize_short: Optional[int] = None  # defaults to image_size
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # random resized crop; [1, 1] disables
    hflip: bool = False  # off by default: flipping swaps left/right motion
    test_clips: int = 1  # recognition multi-view testing: clips x crops
    test_crops: int = 1
    num_workers: int = 4


@dataclass
class TrainConfig:
    """Optimisation and the training loop (methods.md section 4 defaults)."""

    output_dir: str = "runs/default"
    seed: int = 42
    epochs: int = 5
    max_steps: Optional[int] = None  # stop early after this many optimiser steps
    batch_size: int = 128  # global batch (all processes, after accumulation)
    accum_steps: int = 1
    lr: float = 1e-7  # CLIP (backbone) learning rate
    new_module_lr_mult: float = 10.0  # temporal modules and heads
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup: float = 0.1  # fraction of the total steps (<1) or a number of steps (>=1)
    grad_clip: Optional[float] = 5.0
    # "auto" | "fp32" | "bf16" | "fp16" (autocast, fp32 master weights). auto: bf16 where the
    # device computes it natively (recent GPUs, CPUs with AVX512-BF16 / AMX), else fp16 on GPUs
    # and fp32 on CPUs, where emulated bf16 is many times slower than fp32.
    precision: str = "auto"
    log_every: int = 10
    eval_every: int = 1  # epochs between validations
    save_every: Optional[int] = None  # optimiser steps between mid-epoch checkpoints
    # Gradient caching (retrieval only): the loss sees each micro-batch of batch_size / accum_steps
    # clips whole (all processes together) while each process encodes chunk_size clips at a time
    # with the graph, at the cost of one extra forward pass. contrastive_batch, when set, must
    # equal batch_size / accum_steps: a guard against shrinking the negatives by accumulation.
    contrastive_batch: Optional[int] = None
    chunk_size: Optional[int] = None
    deterministic: bool = False


@dataclass
class EvalConfig:
    """Evaluation protocol (methods.md section 6)."""

    split: str = "test"  # "val" during training; "test" only for the final report
    batch_size: int = 16
    dsl: bool = False  # dual-softmax re-ranking, labelled in the output
    v2t: str = "lenient"  # multi-caption video-to-text: "lenient" | "strict" (both reported)
    sim_chunk: int = 256  # texts x videos chunk for Mug similarity


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path, overrides: Sequence[str] = (), check_files: bool = True) -> ExperimentConfig:
    """Read an experiment YAML and apply dotted ``key=value`` overrides, checking every key and type.

    Unknown keys, wrong types and malformed overrides raise ``ConfigError`` naming the file and
    the key, before anything is built.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    schema = OmegaConf.structured(ExperimentConfig)
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    try:
        merged = OmegaConf.merge(schema, loaded)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_describe(err)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.lr=1e-6")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {_describe(err)}") from None
    cfg: ExperimentConfig = OmegaConf.to_object(merged)
    validate_config(cfg, check_files)
    return cfg


def _describe(err) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return f"unknown key {key!r} (check the spelling; see mugstan/config.py for every field)"
    return f"key {key!r}: {msg}" if key else msg


class ConfigError(ValueError):
    """A configuration problem, found before anything is built."""


def validate_config(cfg: ExperimentConfig, check_files: bool = True) -> None:
    """Checks beyond types: choices and (``check_files``) the files that must exist."""
    t = cfg.train
    if t.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision={t.precision!r} must be auto, fp32, bf16 or fp16")
    for name in ("batch_size", "accum_steps", "epochs"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if t.batch_size % t.accum_steps:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.accum_steps={t.accum_steps}")
    validate_gradcache(cfg)
    if cfg.eval.v2t not in ("lenient", "strict"):
        raise ConfigError(f"eval.v2t={cfg.eval.v2t!r} must be lenient or strict")
    if not check_files:
        return
    if cfg.model.weights and not Path(cfg.model.weights).expanduser().exists():
        raise ConfigError(f"model.weights: {cfg.model.weights} does not exist")
    for split in ("train", "val", "test"):
        ann = getattr(cfg.data, f"{split}_ann")
        if ann and not Path(ann).expanduser().is_file():
            raise ConfigError(f"data.{split}_ann: {ann} does not exist")
    for key, value in cfg.data.extra.items():
        if not Path(value).expanduser().exists():
            raise ConfigError(f"data.extra.{key}: {value} does not exist")
    if cfg.data.root and not Path(cfg.data.root).expanduser().is_dir():
        raise ConfigError(f"data.root: {cfg.data.root} is not a folder")


def validate_gradcache(cfg: ExperimentConfig) -> None:
    """train.contrastive_batch and train.chunk_size: positive, consistent, and for retrieval only."""
    t = cfg.train
    micro = t.batch_size // t.accum_steps  # the contrastive batch: one micro-batch, all processes
    for name in ("contrastive_batch", "chunk_size"):
        value = getattr(t, name)
        if value is not None and value < 1:
            raise ConfigError(f"train.{name}={value} must be at least 1, or null to turn it off")
    if t.contrastive_batch is not None and t.contrastive_batch != micro:
        raise ConfigError(
            f"train.contrastive_batch={t.contrastive_batch} but the loss sees train.batch_size / train.accum_steps = "
            f"{t.batch_size} / {t.accum_steps} = {micro} clips: accumulation shrinks the negatives. Set train.batch_size="
            f"{t.contrastive_batch * t.accum_steps} (or train.accum_steps=1 and train.batch_size={t.contrastive_batch}), "
            "and train.chunk_size to the clips per process that fit in memory")
    if cfg.model.task != "retrieval":
        for name in ("contrastive_batch", "chunk_size"):
            if getattr(t, name) is not None:
                raise ConfigError(
                    f"train.{name} (gradient caching) needs a contrastive loss, model.task=retrieval; "
                    f"model.task={cfg.model.task!r} has no in-batch negatives, so train.accum_steps gives the "
                    f"full-batch gradient: remove train.{name}")


def save_config(cfg: ExperimentConfig, path) -> None:
    from omegaconf import OmegaConf

    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

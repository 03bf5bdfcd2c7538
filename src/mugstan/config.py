"""Typed configuration for every mugstan experiment.

An experiment is one YAML file with four sections, each typed by a dataclass below:

    model:  backbone x branch x head (+ classifier for recognition)  -> ModelConfig
    data:   dataset format, annotation files, sampling, transforms -> DataConfig
    train:  optimisation, precision, checkpointing, logging        -> TrainConfig
    eval:   retrieval / recognition protocol                       -> EvalConfig

Configs are OmegaConf structured configs: unknown keys and wrong types are errors, and dotted
overrides from the command line (``train.lr=1e-6``) are checked against the same types. Every
choice is an ``Enum`` below, spelt one way everywhere (configs, command line, demo, docs) and
checked once, when the config is loaded; keys of earlier mugstan versions get an error that names
their replacement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from mugstan.hub import is_spec


class Choice(str, Enum):
    """A config choice: compares, prints and formats as its value."""

    __str__ = str.__str__
    __format__ = str.__format__


class Branch(Choice):
    """Frame-level branch over the backbone: per-frame embeddings [B, T, E] either way."""

    none = "none"  # the backbone's own per-frame embeddings
    stan = "stan"  # STAN's spatial-temporal auxiliary branch (methods.md section 4)


class Head(Choice):
    """Video-level head over per-frame embeddings, and its text side and scores."""

    mean = "mean"  # STAN's pooling: masked mean of the raw frame embeddings
    meanP = "meanP"  # CLIP4Clip: masked mean of the L2-normalised frame embeddings
    seqTransf = "seqTransf"  # CLIP4Clip: temporal transformer, then meanP
    tdb_tab = "tdb_tab"  # CLIP2Video: temporal difference and alignment blocks
    mug = "mug"  # Mug-STAN: mutual-guided token-frame alignment


class Task(Choice):
    retrieval = "retrieval"
    recognition = "recognition"
    chat = "chat"  # video chat: the video encoder as the eyes of a LLaVA language model (mugstan.chat)


class Classifier(Choice):
    text = "text"  # cosine classifier initialised from class-name prompts
    linear = "linear"


class TimeModule(Choice):
    self = "self"  # temporal self-attention
    conv = "conv"  # 3D convolution


class MugMode(Choice):
    simple = "simple"
    full = "full"


class Reduction(Choice):
    mean = "mean"  # 0.5 * (CE_t2v + CE_v2t)
    sum = "sum"  # CE_t2v + CE_v2t (STAN / Mug-STAN)


class Precision(Choice):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class SamplerKind(Choice):
    segment = "segment"
    dense = "dense"


class V2T(Choice):
    lenient = "lenient"
    strict = "strict"


@dataclass
class STANConfig:
    """The spatial-temporal auxiliary branch (methods.md section 4)."""

    depth: int = 4  # K: branch levels, fed by the last K CLIP vision layers
    time_module: TimeModule = TimeModule.self
    drop_path: float = 0.1  # drop-path rates are linspace(0, drop_path, depth)
    max_frames: int = 64  # size of the learned temporal embedding; caps T


class VideoTokens(Choice):
    """How a video becomes language-model tokens (mugstan.chat.model.video_tokens)."""

    temporal_spatial = "temporal_spatial"  # T per-frame tokens + P per-patch tokens (Video-ChatGPT, BT-Adapter)
    frame_mean = "frame_mean"  # P tokens of CLIP's frame mean (branch bypassed): order-blind, the control


class ChatDtype(Choice):
    """Dtype of a chat model's frozen parts (trained parts keep fp32 master weights)."""

    auto = "auto"  # bf16 on a GPU, fp32 on a CPU
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass
class ChatConfig:
    """Video chat (``model.task: chat``, docs/chat.md): a LLaVA checkpoint whose CLIP vision tower
    gets the branch; the video's tokens take the image tokens' place."""

    llava: Optional[str] = None  # LlavaForConditionalGeneration: HF folder or hub name (llava-hf/llava-1.5-7b-hf)
    branch_weights: Optional[str] = None  # a mugstan checkpoint (folder, convert .safetensors, hub spec) whose branch.* is loaded
    feature_layer: Optional[int] = None  # the vision layer whose tokens feed the projector; null: LLaVA's vision_feature_layer
    video_tokens: VideoTokens = VideoTokens.temporal_spatial
    tune: list[str] = field(default_factory=lambda: ["projector"])  # trained parts: projector, branch, llm
    dtype: ChatDtype = ChatDtype.auto  # frozen parts' dtype: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    system: str = ""  # prompt: {system}{user}<video>\n{question}{assistant} {answer}</s>
    user: str = "USER: "
    assistant: str = " ASSISTANT:"
    max_length: int = 1024  # tokens of a training item (video tokens included); longer answers are cut
    max_new_tokens: int = 128
    answers_file: Optional[str] = None  # Video QA answers (JSON for LLM-judge scripts); null: output_dir/answers_SPLIT.json


@dataclass
class ModelConfig:
    """Backbone x branch x head (x classifier). Built by ``mugstan.models.build_model``."""

    # Backbone: an open_clip model name ("ViT-B-32", "ViT-B-16", "ViT-L-14", or a mugstan tiny
    # config such as "mugstan-tiny") and where its weights come from: an open_clip pretrained
    # tag ("openai", "laion2b_s34b_b79k", downloaded and cached by open_clip) and/or a local
    # file (OpenAI .pt, HuggingFace CLIPModel directory, open_clip-layout safetensors).
    backbone: Optional[str] = "ViT-B-32"
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    # An open_clip model config ({embed_dim, quick_gelu, vision_cfg, text_cfg}) for an architecture
    # open_clip does not name; used instead of model.backbone (converters write it; null otherwise).
    backbone_config: Optional[dict[str, Any]] = None
    # Frame-level branch (none | stan) and video-level head (mean | meanP | seqTransf | tdb_tab |
    # mug). STAN = branch stan + head mean; Mug-STAN = branch stan + head mug.
    branch: Branch = Branch.none
    head: Head = Head.meanP
    task: Task = Task.retrieval
    stan: STANConfig = field(default_factory=STANConfig)
    seq_layers: int = 4  # seqTransf / TDB temporal transformer depth
    tab_centers: int = 5  # CLIP2Video TAB centres K (7 for VATEX)
    tab_weight: float = 0.5  # w in S = w * S_global + (1 - w) * S_tab
    clip2video_compat: bool = False  # reproduce CLIP2Video's head-major mask expansion
    mug_mode: MugMode = MugMode.simple
    mug_compat: bool = False  # reproduce the reference's padded-word leak in "full" mode
    mug_lambda: float = 100.0
    # Temperature: None -> learned logit scale (CLIP's, clamped to <= 100); a number tau ->
    # fixed scale 1 / tau (STAN: 0.01 MSR-VTT B/32, 0.02 B/16, 0.05 DiDeMo).
    temperature: Optional[float] = None
    loss_reduction: Reduction = Reduction.mean  # symmetric InfoNCE: mean or sum of the two directions
    # Recognition: a classifier on the head's video embedding
    classifier: Classifier = Classifier.text
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    prompt_templates: list[str] = field(default_factory=lambda: ["a video of {}."])
    context_length: int = 32  # text tokens L, EOT always kept
    grad_checkpointing: bool = False
    freeze_backbone: bool = False
    chat: ChatConfig = field(default_factory=ChatConfig)  # model.task: chat only


@dataclass
class DataConfig:
    """Where the data is and how clips are sampled and transformed (data.md)."""

    # Format name (see mugstan.data.datasets): "msrvtt", "msrvtt_json", "didemo", "lsmdc",
    # "msvd", "vatex", "activitynet", "video_list", "ucf101", "hmdb51", "kinetics_csv", "ssv2", "webvid", "cc3m",
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
    sampler: SamplerKind = SamplerKind.segment
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
    precision: Precision = Precision.auto
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
    v2t: V2T = V2T.lenient  # multi-caption video-to-text convention
    sim_chunk: int = 256  # texts x videos chunk for Mug similarity


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path, overrides: Union[Sequence[str], Mapping[str, Any]] = (), check_files: bool = True) -> ExperimentConfig:
    """Read an experiment YAML and apply overrides, checking every key and type.

    overrides: dotted ``key=value`` strings as typed on the command line (values parsed as YAML),
    and/or ``(key, value)`` pairs or a mapping ``{"data.root": path}`` whose values are taken as
    they are (paths from code: no parsing, no string replacement).
    Unknown keys, wrong types, keys of earlier versions and malformed overrides raise
    ``ConfigError`` naming the file and the key, before anything is built.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: an experiment config is a mapping with model/data/train/eval sections")
    cfg = _structured(ExperimentConfig, loaded, overrides, str(path))
    validate_config(cfg, check_files)
    return cfg


def model_config(fields: Mapping[str, Any], overrides: Union[Sequence[str], Mapping[str, Any]] = (), source: str = "model config") -> ModelConfig:
    """A ``ModelConfig`` from plain fields (a converted checkpoint's metadata) and ``model.*`` overrides."""
    cfg = _structured(ExperimentConfig, {"model": dict(fields)}, overrides, source)
    validate_config(cfg, check_files=False)
    return cfg.model


def _structured(schema_cls, data: dict, overrides, source: str):
    """Merge ``data`` and then each override into the typed schema; errors name ``source`` / the override."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _reject_old_keys(data, source)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema_cls), data)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for item in items:
        if isinstance(item, tuple):
            key, value = item
            update = OmegaConf.create({})
            OmegaConf.update(update, key, value, force_add=True)
            where = f"override {key}={value!r}"
        else:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value, e.g. train.lr=1e-6")
            update, where = OmegaConf.from_dotlist([item]), f"override {item!r}"
        _reject_old_keys(OmegaConf.to_container(update), where)
        try:
            merged = OmegaConf.merge(merged, update)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{where}: {_describe(err)}") from None
    return OmegaConf.to_object(merged)


# model.temporal (mugstan 0.1) -> (model.branch, model.head); head "cosine" meant the temporal module's own.
_OLD_TEMPORAL = {"meanP": ("none", "meanP"), "seqTransf": ("none", "seqTransf"), "tdb_tab": ("none", "tdb_tab"), "stan": ("stan", "mean")}


def _reject_old_keys(raw: dict, where: str) -> None:
    """Keys and values of mugstan 0.1 configs: an error that says what replaces them."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        return
    if "temporal" in model:
        old_head = model.get("head", "cosine")
        branch, head = _OLD_TEMPORAL.get(model["temporal"], ("none", model["temporal"]))
        head = "mug" if old_head == "mug" else head
        raise ConfigError(
            f"{where}: model.temporal was replaced by model.branch and model.head: write "
            f"branch: {branch}, head: {head} for temporal: {model['temporal']}, head: {old_head} (see docs/models.md)")
    if model.get("head") == "cosine":
        raise ConfigError(f"{where}: model.head=cosine was replaced: the head is the video-level module, one of "
                          f"{', '.join(h.value for h in Head)} (STAN is branch: stan, head: mean)")


def _describe(err) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return f"unknown key {key!r} (check the spelling; see mugstan/config.py for every field)"
    return f"key {key!r}: {msg}" if key else msg


class ConfigError(ValueError):
    """A configuration problem, found before anything is built."""


def validate_config(cfg: ExperimentConfig, check_files: bool = True) -> None:
    """Checks beyond types and choices: ranges, combinations and (``check_files``) the files that must exist."""
    t, m, d = cfg.train, cfg.model, cfg.data
    positive = {"data.num_frames": d.num_frames, "data.image_size": d.image_size, "model.context_length": m.context_length,
                "model.stan.depth": m.stan.depth, "model.stan.max_frames": m.stan.max_frames, "model.seq_layers": m.seq_layers,
                "model.tab_centers": m.tab_centers, "eval.batch_size": cfg.eval.batch_size, "eval.sim_chunk": cfg.eval.sim_chunk,
                "train.log_every": t.log_every, "data.dense_stride": d.dense_stride}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be at least 1")
    if m.context_length < 3:
        raise ConfigError(f"model.context_length={m.context_length} must be at least 3 (SOT, one word, EOT)")
    if t.lr <= 0:
        raise ConfigError(f"train.lr={t.lr} must be positive")
    if m.temperature is not None and m.temperature <= 0:
        raise ConfigError(f"model.temperature={m.temperature} must be positive, or null for CLIP's learned scale")
    if not 0.0 < m.tab_weight < 1.0:
        raise ConfigError(f"model.tab_weight={m.tab_weight} must be in (0, 1)")
    if m.branch == Branch.stan and d.num_frames > m.stan.max_frames:
        raise ConfigError(f"data.num_frames={d.num_frames} exceeds STAN's temporal embedding: raise model.stan.max_frames to at least {d.num_frames}")
    for name in ("batch_size", "accum_steps", "epochs"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if t.batch_size % t.accum_steps:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.accum_steps={t.accum_steps}")
    validate_gradcache(cfg)
    validate_chat(cfg)
    if not check_files:
        return
    if cfg.model.weights and not is_spec(cfg.model.weights) and not Path(cfg.model.weights).expanduser().exists():
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


CHAT_PARTS = ("projector", "branch", "llm")


def validate_chat(cfg: ExperimentConfig) -> None:
    """model.chat: what model.task=chat needs."""
    c = cfg.model.chat
    if cfg.model.task != Task.chat:
        return
    if not c.llava:
        raise ConfigError("model.task=chat needs model.chat.llava: a LLaVA checkpoint folder or hub name, e.g. llava-hf/llava-1.5-7b-hf")
    bad = [p for p in c.tune if p not in CHAT_PARTS]
    if bad or not c.tune:
        raise ConfigError(f"model.chat.tune={list(c.tune)}: choose a non-empty subset of {', '.join(CHAT_PARTS)}")
    if "branch" in c.tune and cfg.model.branch == Branch.none:
        raise ConfigError("model.chat.tune names branch but model.branch=none has no parameters: remove it or set model.branch=stan")
    for name in ("max_length", "max_new_tokens"):
        if getattr(c, name) < 1:
            raise ConfigError(f"model.chat.{name}={getattr(c, name)} must be at least 1")


def save_config(cfg: ExperimentConfig, path) -> None:
    from omegaconf import OmegaConf

    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

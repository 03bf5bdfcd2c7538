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

import math
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from mugstan.errors import UserError
from mugstan.files import regular_file
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
    retrieval = "retrieval"  # video-text retrieval: contrastive training, R@K both ways
    recognition = "recognition"  # action recognition: a classifier on the video embedding, top-1 / top-5
    detection = "detection"  # AVA-style spatio-temporal action detection (mugstan.detection)
    chat = "chat"  # video chat: the video encoder as the eyes of a LLaVA language model (mugstan.chat)


class Classifier(Choice):
    # cosine scores against the class-name prompts' text features, computed once (no_grad) and kept
    # fixed: the STAN recognition recipe (its text features are cached at the first step)
    text = "text"
    text_trainable = "text_trainable"  # the same cosine classifier, its class vectors trained from there
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
    # CLIP4Clip / CLIP2Video: one frame every 1 / data.sample_fps seconds, at most num_frames of
    # them chosen uniformly (np.linspace) when there are more; fewer are padded and masked.
    fps = "fps"


class Interpolation(Choice):
    """How frames are resized (``mugstan.data.transforms``)."""

    # mugstan's default: the decoder scales the short side while converting (FFmpeg's bilinear),
    # crops are resized bicubic with antialiasing
    fast = "fast"
    # frames decoded at full size, every resize bicubic with antialiasing: PIL's BICUBIC, as
    # CLIP4Clip's and CLIP2Video's torchvision transforms on PIL images
    bicubic = "bicubic"
    # frames decoded at full size, every resize OpenCV's INTER_LINEAR (no antialiasing): mmcv's
    # imresize in the STAN / Mug-STAN fork of mmaction2
    bilinear = "bilinear"


class Decoder(Choice):
    """Which library decodes the sampled frames (the sampled indices are the same either way)."""

    pyav = "pyav"  # PyAV (FFmpeg bundled in its wheel), on the CPU: the default
    torchcodec = "torchcodec"  # torchcodec (the torchcodec extra + system FFmpeg), on data.decode_device


class DecodeDevice(Choice):
    cpu = "cpu"
    cuda = "cuda"  # torchcodec with NVDEC in the training process (data.num_workers: 0); frames stay on the GPU


class Schedule(Choice):
    """Learning-rate schedule, per optimiser step (``mugstan.engine.optim``)."""

    warmup_cosine = "warmup_cosine"  # linear warmup over train.warmup, then cosine to 0 at the end
    # CLIP4Clip's BertAdam 'warmup_cosine': x = step / total; x / warmup while x < warmup, then
    # 0.5 * (1 + cos(pi * x)) (the cosine runs over the whole run, not from the end of warmup)
    bert_warmup_cosine = "bert_warmup_cosine"
    # mmengine (STAN / Mug-STAN): LinearLR from train.start_factor to 1 over epochs
    # [0, train.warmup_epochs), then CosineAnnealingLR(T_max = train.cosine_t_max epochs) from
    # train.cosine_begin (default: the warmup end) to train.cosine_end (default: the end of the run)
    linear_then_cosine = "linear_then_cosine"


class OptimizerKind(Choice):
    adamw = "adamw"  # torch.optim.AdamW (STAN / Mug-STAN's optimiser)
    # CLIP4Clip / CLIP2Video's BertAdam: Adam without bias correction, weight decay added to the
    # update, each parameter's gradient also clipped to train.grad_clip (mugstan.engine.optim.BertAdam)
    bertadam = "bertadam"


class SelectOn(Choice):
    """Which split picks checkpoints/best during training."""

    val = "val"  # data.val_ann (mugstan's protocol; no validation split -> the last model)
    test = "test"  # data.test_ann, as the STAN / CLIP4Clip authors did (labelled in results.json)


class V2T(Choice):
    lenient = "lenient"
    strict = "strict"


@dataclass
class STANConfig:
    """The spatial-temporal auxiliary branch (methods.md section 4)."""

    depth: int = 4  # K: branch levels, fed by the last K CLIP vision layers
    time_module: TimeModule = TimeModule.self  # the temporal module of each level: self-attention or 3D convolution
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
    # a mugstan checkpoint (folder, convert .safetensors, hub spec) whose branch.* is loaded
    branch_weights: Optional[str] = None
    # the vision layer whose tokens feed the projector; null: LLaVA's vision_feature_layer
    feature_layer: Optional[int] = None
    video_tokens: VideoTokens = VideoTokens.temporal_spatial
    tune: list[str] = field(default_factory=lambda: ["projector"])  # trained parts: projector, branch, llm
    dtype: ChatDtype = ChatDtype.auto  # frozen parts' dtype: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    # prompts from the checkpoint's chat template when it has one; false: system/user/assistant below
    chat_template: bool = True
    # fallback prompt: {system}{user}<video>\n{question}{assistant} {answer}</s> (system: also the template's)
    system: str = ""
    user: str = "USER: "  # fallback prompt: the user turn's prefix (LLaVA-1.5's template)
    assistant: str = " ASSISTANT:"  # fallback prompt: the assistant turn's prefix
    max_length: int = 1024  # tokens of a training item (video tokens included); longer answers are cut
    max_new_tokens: int = 128  # longest generated answer, in tokens
    temperature: float = 0.0  # 0: greedy (deterministic); above 0: sampling at this temperature
    top_p: float = 1.0  # sampling: nucleus (top-p) cut; 1 keeps every token
    # Video QA answers (JSON for LLM-judge scripts); null: output_dir/answers_SPLIT.json
    answers_file: Optional[str] = None


@dataclass
class DetectionConfig:
    """The RoI head of ``model.task: detection`` (mugstan.detection; mmaction2's BBoxHeadAVA)."""

    roi_size: int = 8  # RoIAlign output size on the time-pooled patch map
    dropout: float = 0.5  # before the classifier


@dataclass
class ModelConfig:
    """Backbone x branch x head (x classifier). Built by ``mugstan.models.build_model``."""

    # Backbone: an open_clip model name ("ViT-B-32", "ViT-B-16", "ViT-L-14", or a mugstan tiny
    # config such as "mugstan-tiny") and where its weights come from: an open_clip pretrained
    # tag ("openai", "laion2b_s34b_b79k", downloaded and cached by open_clip) and/or a local
    # file (OpenAI .pt, HuggingFace CLIPModel directory, open_clip-layout safetensors).
    backbone: Optional[str] = "ViT-B-32"
    # open_clip pretrained tag (openai, laion2b_s34b_b79k: `mugstan models`), downloaded once
    pretrained: Optional[str] = None
    # local weights instead: OpenAI .pt, HF CLIPModel folder, open_clip .safetensors, hf-hub:org/name
    weights: Optional[str] = None
    # An open_clip model config ({embed_dim, quick_gelu, vision_cfg, text_cfg}) for an architecture
    # open_clip does not name; used instead of model.backbone (converters write it; null otherwise).
    backbone_config: Optional[dict[str, Any]] = None
    # Initialise every matching weight from an earlier run before training: a checkpoint folder,
    # a `mugstan convert` file or hf-hub:org/name (post-pretraining -> fine-tuning). Weights the
    # source lacks (a new head or classifier) keep their initialisation; both lists are printed.
    init_from: Optional[str] = None
    # Frame-level branch (none | stan) and video-level head (mean | meanP | seqTransf | tdb_tab |
    # mug). STAN = branch stan + head mean; Mug-STAN = branch stan + head mug.
    branch: Branch = Branch.none
    head: Head = Head.meanP  # the video-level head (`mugstan models` lists them)
    task: Task = Task.retrieval  # what is trained and evaluated
    stan: STANConfig = field(default_factory=STANConfig)
    seq_layers: int = 4  # seqTransf / TDB temporal transformer depth
    tab_centers: int = 5  # CLIP2Video TAB centres K (7 for VATEX)
    tab_weight: float = 0.5  # w in S = w * S_global + (1 - w) * S_tab
    clip2video_compat: bool = False  # reproduce CLIP2Video's head-major mask expansion
    mug_mode: MugMode = MugMode.simple  # Mug-STAN's alignment: simple (released configs) or full
    mug_compat: bool = False  # reproduce the reference's padded-word leak in "full" mode
    mug_lambda: float = 100.0  # Mug's softmax sharpness over frames and words
    # Temperature: None -> learned logit scale (CLIP's, clamped to <= 100); a number tau ->
    # fixed scale 1 / tau (STAN: 0.01 MSR-VTT B/32, 0.02 B/16, 0.05 DiDeMo).
    temperature: Optional[float] = None
    loss_reduction: Reduction = Reduction.mean  # symmetric InfoNCE: mean or sum of the two directions
    # Recognition: a classifier on the head's video embedding
    classifier: Classifier = Classifier.text
    num_classes: int = 0  # recognition / detection classes; 0: the number of class names
    class_names: list[str] = field(default_factory=list)  # index -> name; empty: the dataset's class-name file
    prompt_templates: list[str] = field(default_factory=lambda: ["a video of {}."])  # class-name prompts, {} = the name
    context_length: int = 32  # text tokens L, EOT always kept
    # Reproduce the STAN authors' CLIPTokenize(length=L): SOT + BPE + EOT cut to L afterwards, so
    # long captions lose their EOT (pooling then takes the largest id). Default: EOT always kept.
    eot_compat: bool = False
    detection: DetectionConfig = field(default_factory=DetectionConfig)  # model.task: detection
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, about 1.3x the time
    freeze_backbone: bool = False  # keep the whole CLIP as loaded (only the branch and head train)
    freeze_text: bool = False  # keep the text tower as loaded (only the video side trains)
    chat: ChatConfig = field(default_factory=ChatConfig)  # model.task: chat only


@dataclass
class MixSource:
    """An extra training source mixed into ``data`` (e.g. CC3M image-text pairs for Mug-STAN's
    post-pretraining): its own format, folder and annotation file; images are one-frame videos."""

    dataset: str = "cc3m"
    root: str = ""
    videos: str = ""
    train_ann: Optional[str] = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class AVAConfig:
    """Keyframe clips of AVA-format datasets (``data.dataset: ava``; mugstan.data.datasets.ava)."""

    # The AVA timestamp at which the video files begin: 900 for the 15-minute clips the usual
    # download scripts cut (seconds 900-1800 of each movie), 0 for whole movies.
    timestamp_start: float = 900.0
    source_fps: float = 30.0  # the frame rate frame_interval counts in (AVA: 30 fps)
    frame_interval: int = 4  # source frames between the data.num_frames sampled around a keyframe
    # person proposals scoring below this are dropped (a keyframe keeps its best-scored ones when none reaches it)
    proposal_score: float = 0.9
    # The model's outputs: action ids 1..num_actions, trained on every row of them (AVA: 80, mmaction2's
    # num_classes=81 less its background column); 0: the label map's (evaluated) actions only.
    num_actions: int = 80


@dataclass
class DataConfig:
    """Where the data is and how clips are sampled and transformed (data.md)."""

    # Format name (see mugstan.data.datasets): "msrvtt", "msrvtt_json", "didemo", "didemo_json", "lsmdc", "lsmdc_json",
    # "msvd", "vatex", "activitynet", "video_list", "ucf101", "hmdb51", "kinetics_csv", "ssv2", "webvid", "cc3m",
    # "jsonl", "ava" (detection)
    dataset: str = "jsonl"
    # The dataset's folder. Relative annotation and extra paths below are inside it, so
    # `data.root=/data/msrvtt` moves the whole dataset; absolute paths stay as they are.
    root: str = ""
    videos: str = ""  # the folder of the videos, relative to data.root ("" = data.root itself)
    train_ann: Optional[str] = None  # the training split's annotation file (relative: inside data.root)
    val_ann: Optional[str] = None  # the validation split's (picks checkpoints/best; null: the last epoch is kept)
    test_ann: Optional[str] = None  # the test split's (`mugstan eval`)
    # Format-specific extra files, e.g. {"data_json": "MSRVTT_data.json"},
    # {"class_names": "classInd.txt"}, {"captions": "raw-captions.pkl"}.
    extra: dict[str, str] = field(default_factory=dict)
    num_frames: int = 12  # T: frames sampled per clip
    test_num_frames: Optional[int] = None  # defaults to num_frames
    sampler: SamplerKind = SamplerKind.segment  # how the T frames are chosen
    dense_stride: int = 4  # sampler dense: source frames between sampled ones
    sample_fps: float = 1.0  # sampler fps: frames per second of video (num_frames is the cap)
    image_size: int = 224  # crop size S in pixels (the backbone's input)
    resize_short: Optional[int] = None  # defaults to image_size
    # Testing resizes the short side to this before the centre crop (defaults to resize_short):
    # STAN trains from short side 256 and tests from 224 (DiDeMo: 256).
    test_resize_short: Optional[int] = None
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # random resized crop; [1, 1] disables
    interpolation: Interpolation = Interpolation.fast  # fast | bicubic (CLIP4Clip, CLIP2Video) | bilinear (STAN)
    hflip: bool = False  # off by default: flipping swaps left/right motion
    test_clips: int = 1  # recognition multi-view testing: clips x crops
    test_crops: int = 1  # 1: centre crop; 3: left, centre, right
    # DataLoader processes per training / evaluation process; "auto": min(4, the cores this process
    # may use); 0: load in the main process
    num_workers: Union[int, str] = "auto"
    # Keep every decoded frame (at the resized short side) of the videos read, up to this many MB
    # per reading process, and sample later epochs from memory; 0: off. For datasets that fit in
    # memory, read many times: the synthetic demo (600 videos, 15 MB) spent more CPU decoding
    # than training. DataLoader workers start empty every epoch: use it with data.num_workers: 0.
    frame_cache_mb: float = 0.0
    mix: list[MixSource] = field(default_factory=list)  # extra training sources, sampled with the main one
    # data.dataset: webdataset (mugstan.data.datasets.shards, data.md): tar shards in video2dataset /
    # img2dataset layout. shards: a brace pattern ("/data/webvid/{00000..01023}.tar"), patterns
    # joined by "::", or a list of them; local paths, "pipe:COMMAND" or http(s) URLs.
    shards: Any = None
    val_shards: Any = None  # evaluation splits from shards (read once into memory); or data.val_ann / test_ann (jsonl)
    test_shards: Any = None  # the test split from shards; or data.test_ann (jsonl)
    epoch_samples: Optional[int] = None  # samples per epoch, all processes (default: the shards' manifest.json)
    shuffle_buffer: int = 500  # samples per reader (process x loader worker) shuffled in memory
    # pyav | torchcodec (mugstan.data.codec). torchcodec was slower than PyAV on a CPU
    # (benchmarks/results/decode_speed.md): it pays with data.decode_device: cuda, where the uint8
    # frames go from NVDEC straight to the crop and normalisation on the GPU.
    decoder: Decoder = Decoder.pyav
    decode_device: DecodeDevice = DecodeDevice.cpu

    @property
    def loader_workers(self) -> int:
        """data.num_workers as a number: "auto" is min(4, the CPU cores this process may use)."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(4, cores)

    @property
    def video_root(self) -> Path:
        """The folder video paths in the annotations are relative to: data.root / data.videos."""
        return Path(self.root).expanduser() / self.videos

    def resolve(self, path: Optional[str]) -> Optional[str]:
        """An annotation / extra path as configured -> the file: relative paths are inside data.root
        (``anchor_paths`` has made data.root absolute)."""
        if not path:
            return path
        return str(_absolute(Path(self.root or "."), path))

    ava: AVAConfig = field(default_factory=AVAConfig)  # data.dataset: ava


@dataclass
class TrainConfig:
    """Optimisation and the training loop (methods.md section 4 defaults)."""

    output_dir: str = "runs/default"  # the run folder: checkpoints, metrics.jsonl, curves.png, results.json
    seed: int = 42  # seeds initialisation, shuffling and frame sampling (a rerun draws the same batches)
    epochs: int = 5  # passes over the training set
    max_steps: Optional[int] = None  # stop early after this many optimiser steps
    batch_size: int = 128  # global batch (all processes, after accumulation)
    accum_steps: int = 1  # micro-batches per optimiser step (batch_size / accum_steps clips each)
    lr: float = 1e-7  # CLIP (backbone) learning rate
    new_module_lr_mult: float = 10.0  # temporal modules and heads
    weight_decay: float = 0.2  # AdamW / BertAdam decoupled weight decay
    optimizer: OptimizerKind = OptimizerKind.adamw  # adamw | bertadam (CLIP4Clip, CLIP2Video)
    # Parameter kinds without weight decay (any of norm, bias, embedding, logit_scale; see
    # mugstan.engine.optim.parameter_kind). STAN authors: [norm, bias]; CLIP4Clip: [bias].
    no_decay: list[str] = field(default_factory=lambda: ["norm", "bias", "embedding", "logit_scale"])
    # The same for the new modules (branch, head, logit scale); null: train.no_decay. STAN authors:
    # [] -- mmengine's DefaultOptimWrapperConstructor gives a parameter that matches a custom key
    # (custom_keys={'STAN': lr_mult=10}) that key's settings and skips norm_decay_mult and
    # bias_decay_mult, so the STAN branch's norms, biases and temporal embedding decay.
    no_decay_new: Optional[list[str]] = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # Adam's moment decay rates
    eps: float = 1e-6  # Adam's epsilon
    warmup: float = 0.1  # fraction of the total steps (<1) or a number of steps (>=1)
    # Retrieval: the text tower stays as loaded for this fraction of the total steps (<1) or number
    # of steps (>=1), then trains (0: from the start; model.freeze_text: never). Both towers start
    # blind to what only the video shows (a CLIP pretrained on images, a branch that starts as the
    # identity): trained together from step 0 they agree on "left = right", a saddle contrastive
    # training leaves slowly; the loaded text tower's captions are distinct targets that the video
    # side learns against first (docs/reproduction.md, benchmarks/results/synthetic_demo.md).
    freeze_text_for: float = 0.0
    schedule: Schedule = Schedule.warmup_cosine  # see Schedule
    # linear_then_cosine (mmengine's LinearLR + CosineAnnealingLR, converted to steps), in epochs:
    start_factor: float = 0.05  # LinearLR start factor (lr x start_factor at step 0)
    warmup_epochs: float = 1.0  # LinearLR end: the factor reaches 1 here
    cosine_begin: Optional[float] = None  # CosineAnnealingLR begin (None: warmup_epochs); factor 1 in between
    cosine_t_max: float = 4.5  # CosineAnnealingLR T_max (the cosine is periodic past it, as mmengine's)
    cosine_end: Optional[float] = None  # CosineAnnealingLR end (None: the end of the run); the factor holds after it
    grad_clip: Optional[float] = 5.0  # clip the gradient norm to this; null: no clipping
    # The authors' gradient scale (STAN's GatherLayer, CLIP4Clip's AllGather): their all_gather's
    # backward keeps only each process's rows, and DDP averages, so every gradient that reaches the
    # gathered features is 1/W of the full-batch one on W GPUs, and grad_clip bounds W x grad_clip
    # of mugstan's (full) gradient. W > 1: every gradient but a learned logit scale's (which the
    # authors apply after the gather, on every process alike) is divided by W before clipping and
    # the optimiser step, whatever the number of processes of this run. 1: the full gradient.
    gather_grad_world: int = 1
    # "auto" | "fp32" | "bf16" | "fp16" (autocast, fp32 master weights). auto: bf16 on GPUs that
    # support it, else fp16; on a CPU bf16 only where a bf16 matrix product measures >= 1.25x
    # faster than fp32 (mugstan.engine.precision; CPU flags do not tell: a Xeon reporting
    # AVX512-BF16 ran bf16 2x slower), else fp32.
    precision: Precision = Precision.auto
    log_every: int = 10  # optimiser steps between metrics.jsonl lines
    eval_every: int = 1  # epochs between validations
    save_every: Optional[int] = None  # optimiser steps between mid-epoch checkpoints
    # Gradient caching (retrieval only): the loss sees each micro-batch of batch_size / accum_steps
    # clips whole (all processes together) while each process encodes chunk_size clips at a time
    # with the graph, at the cost of one extra forward pass. contrastive_batch, when set, must
    # equal batch_size / accum_steps: a guard against shrinking the negatives by accumulation.
    contrastive_batch: Optional[int] = None
    chunk_size: Optional[int] = None  # clips per process encoded at once with gradient caching; null: off
    deterministic: bool = False  # deterministic kernels (torch.use_deterministic_algorithms): bitwise reruns, slower
    # torch.compile of the video encoder and the text tower (mugstan.engine.compile); null: on for
    # CUDA, off on a CPU (compiling took minutes there before a millisecond step could win it back)
    compile: Optional[bool] = None
    # AdamW's fused kernel on CUDA (one pass over all tensors) instead of foreach, PyTorch's CUDA default and
    # the authors' optimiser; not bitwise the same updates. On a CPU the fused kernel is always used.
    fused_adamw: bool = False


@dataclass
class EvalConfig:
    """Evaluation protocol (methods.md section 6)."""

    split: str = "test"  # "val" during training; "test" only for the final report
    batch_size: int = 16  # clips per evaluation forward pass
    dsl: bool = False  # dual-softmax re-ranking, labelled in the output
    v2t: V2T = V2T.lenient  # multi-caption video-to-text convention
    sim_chunk: int = 256  # texts x videos chunk for Mug similarity
    # Split that picks checkpoints/best while training: "val" (default, data.val_ann) or "test"
    # (the authors' protocol for STAN, Mug-STAN and CLIP4Clip; results.json says so).
    select_on: SelectOn = SelectOn.val
    # Detection: where the AVA-format result CSV goes (default OUTPUT_DIR/detections_SPLIT.csv).
    detections: Optional[str] = None
    # Detection: score only the N highest-scored rows of each keyframe, as ActivityNet's
    # get_ava_performance.py does (50); 0: every row, as mmaction2's AVA evaluation.
    detections_per_keyframe: int = 0


@dataclass
class ExperimentConfig:
    name: str = "experiment"  # the run's name (logs, model cards)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(
    path,
    overrides: Union[Sequence[str], Mapping[str, Any]] = (),
    check_files: bool = True,
    splits: Sequence[str] = ("train", "val", "test"),
) -> ExperimentConfig:
    """Read an experiment YAML and apply overrides, checking every key and type.

    overrides: dotted ``key=value`` strings as typed on the command line (values parsed as YAML),
    and/or ``(key, value)`` pairs or a mapping ``{"data.root": path}`` whose values are taken as
    they are (paths from code: no parsing, no string replacement).
    Unknown keys, wrong types, keys of earlier versions and malformed overrides raise
    ``ConfigError`` naming the file and the key, before anything is built. ``splits``: the
    annotation files that must exist (evaluation needs only the split it evaluates).
    """
    from omegaconf import OmegaConf

    path = regular_file(find_config(path), "config file")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict) or not loaded:
        found = "a list" if isinstance(loaded, list) else "empty" if not loaded else f"a single value ({loaded!r:.40})"
        raise ConfigError(
            f"{path}: the file is {found}; an experiment config is a mapping with model/data/train/eval "
            "sections (see `mugstan config list`)"
        )
    cfg = _structured(ExperimentConfig, loaded, overrides, str(path))
    anchor_paths(cfg)
    validate_config(cfg, check_files, splits)
    return cfg


CONFIG_DIR = Path(__file__).parent / "configs"  # the configs that ship with mugstan (package data)


def packaged_configs() -> list[str]:
    """The names of the configs that ship with mugstan (src/mugstan/configs/): ``msrvtt/stan_vitb32``, ..."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.glob("*/*.yaml"))


def find_config(name: Union[str, Path]) -> Path:
    """The config file ``name`` means: the file itself when there is one (a local config), else the
    packaged config of that name, from any folder: ``msrvtt/stan_vitb32``, with or without
    ``.yaml``, or as ``configs/msrvtt/stan_vitb32.yaml`` (the path in a source checkout before the
    configs moved into the package). Neither: a ``MissingFileError`` listing the nearest names."""
    import difflib

    from mugstan.errors import MissingFileError

    path = Path(name).expanduser()
    if path.exists() or path.is_symlink() or path.is_absolute():
        return path
    key = path.as_posix().removeprefix("./").removeprefix("configs/")
    key = key.removesuffix(".yaml").removesuffix(".yml")
    packaged = CONFIG_DIR / f"{key}.yaml"
    if packaged.is_file():
        return packaged
    names = packaged_configs()
    near = (
        difflib.get_close_matches(key, names, n=4, cutoff=0.6)
        or [n for n in names if n.split("/")[0] == key.split("/")[0]][:4]
    )
    hint = f"nearest: {', '.join(near)}; " if near else ""
    raise MissingFileError(
        f"config {name}: no such file, and no packaged config of that name ({hint}`mugstan config list` lists them all)"
    )


def anchor_paths(cfg: ExperimentConfig, base: Union[str, Path, None] = None) -> ExperimentConfig:
    """Make every path of ``cfg`` absolute, in place, so that the config means the same files from
    any working folder (and when saved, from wherever its file is opened). The one rule
    (docs/training.md, "Paths"):

    - the dataset's own files (``data.train_ann``/``val_ann``/``test_ann``, ``data.extra``, and a
      ``data.mix`` source's ``train_ann``/``extra``) are relative to their ``root``;
    - every other path (``data.root``, ``data.mix[].root``, ``model.weights``, ``model.init_from``,
      ``model.chat.branch_weights``, ``model.chat.answers_file``, ``train.output_dir``,
      ``eval.detections``) and a root left empty are relative to ``base``, the working folder by
      default; ``model.chat.llava`` too when it names an existing folder (otherwise it is a hub
      name).

    ``hf-hub:``/``local-dir:`` specs and absolute paths stay as they are, so anchoring twice
    changes nothing: a saved config loads to the same paths from any folder.
    """
    base = Path.cwd() if base is None else Path(base)

    def here(path):
        return path if not path or is_spec(path) else str(_absolute(base, path))

    d, m = cfg.data, cfg.model
    d.root = here(d.root) or str(base.absolute())
    for split in ("train", "val", "test"):
        setattr(d, f"{split}_ann", d.resolve(getattr(d, f"{split}_ann")))
    d.extra = {key: d.resolve(value) for key, value in d.extra.items()}
    for source in d.mix:
        source.root = here(source.root) or str(base.absolute())
        inside = mix_data_config(d, source)
        source.train_ann, source.extra = inside.train_ann, dict(inside.extra)
    m.weights, m.init_from = here(m.weights), here(m.init_from)
    m.chat.branch_weights, m.chat.answers_file = here(m.chat.branch_weights), here(m.chat.answers_file)
    if m.chat.llava and (base / Path(m.chat.llava).expanduser()).is_dir():
        m.chat.llava = here(m.chat.llava)
    cfg.train.output_dir = here(cfg.train.output_dir)
    cfg.eval.detections = here(cfg.eval.detections)
    return cfg


def _absolute(base: Path, path: str) -> Path:
    """``path`` (``~`` expanded) if absolute, else ``base / path``, with ``.`` and ``..`` folded
    (``os.path.abspath``; symlinks are kept, as the user named them)."""
    p = Path(path).expanduser()
    return Path(os.path.abspath(p if p.is_absolute() else base.absolute() / p))


def mix_data_config(d: DataConfig, source: MixSource) -> DataConfig:
    """The data config of a ``data.mix`` source: ``d``'s sampling and transforms, the source's files."""
    from dataclasses import replace

    own = replace(
        d,
        dataset=source.dataset,
        root=source.root,
        videos=source.videos,
        train_ann=source.train_ann,
        val_ann=None,
        test_ann=None,
        extra=dict(source.extra),
        mix=[],
    )
    return replace(own, train_ann=own.resolve(own.train_ann), extra={k: own.resolve(v) for k, v in own.extra.items()})


def model_config(
    fields: Mapping[str, Any], overrides: Union[Sequence[str], Mapping[str, Any]] = (), source: str = "model config"
) -> ModelConfig:
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
_OLD_TEMPORAL = {
    "meanP": ("none", "meanP"),
    "seqTransf": ("none", "seqTransf"),
    "tdb_tab": ("none", "tdb_tab"),
    "stan": ("stan", "mean"),
}


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
            f"branch: {branch}, head: {head} for temporal: {model['temporal']}, head: {old_head} (see docs/models.md)"
        )
    if model.get("head") == "cosine":
        raise ConfigError(
            f"{where}: model.head=cosine was replaced: the head is the video-level module, one of "
            f"{', '.join(h.value for h in Head)} (STAN is branch: stan, head: mean)"
        )


def _describe(err) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        import difflib

        keys, key = config_keys(), str(key)
        last = key.rpartition(".")[2]
        names = {k.rpartition(".")[2] for k in keys}
        near = [k for k in keys if k.rpartition(".")[2] == last]  # the right name in another section
        near += difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        near += [k for k in keys if k.rpartition(".")[2] in difflib.get_close_matches(last, names, n=2, cutoff=0.75)]
        near = list(dict.fromkeys(near))[:3]
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        return f"unknown key {key!r}; {hint}(`mugstan config show CONFIG` lists every key with what it means)"
    return f"key {key!r}: {msg}" if key else msg


def config_keys() -> list[str]:
    """Every dotted key of an experiment config that holds a value: name, model.backbone, model.stan.depth, ..."""
    import dataclasses
    import typing

    def walk(cls, prefix: str) -> list[str]:
        keys = []
        for f, kind in zip(dataclasses.fields(cls), typing.get_type_hints(cls).values(), strict=True):
            keys += walk(kind, f"{prefix}{f.name}.") if dataclasses.is_dataclass(kind) else [prefix + f.name]
        return keys

    return walk(ExperimentConfig, "")


class ConfigError(UserError, ValueError):
    """A configuration problem, found before anything is built."""


def validate_config(
    cfg: ExperimentConfig, check_files: bool = True, splits: Sequence[str] = ("train", "val", "test")
) -> None:
    """Checks beyond types and choices: every numeric range, the combinations, and (``check_files``)
    the files that must exist. Errors are ``ConfigError``s naming the key, the value and the range.
    The checks run in this order, and the first that fails is the error."""
    validate_counts(cfg)
    validate_devices(cfg)
    validate_values(cfg)
    validate_shards(cfg)
    validate_frames_and_detection(cfg)
    t = cfg.train
    if t.batch_size % t.accum_steps:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.accum_steps={t.accum_steps}")
    validate_gradcache(cfg)
    validate_recipe_keys(cfg)
    validate_chat(cfg)
    if check_files:
        validate_files(cfg, splits)


def validate_counts(cfg: ExperimentConfig) -> None:
    """Counts and sizes: at least 1 (some may be null), data.num_workers auto or 0 or more, train.seed
    and model.num_classes 0 or more."""
    t, m, d, e = cfg.train, cfg.model, cfg.data, cfg.eval
    at_least_one = {
        "data.num_frames": d.num_frames,
        "data.image_size": d.image_size,
        "data.dense_stride": d.dense_stride,
        "data.test_clips": d.test_clips,
        "model.stan.depth": m.stan.depth,
        "model.stan.max_frames": m.stan.max_frames,
        "model.seq_layers": m.seq_layers,
        "model.tab_centers": m.tab_centers,
        "eval.batch_size": e.batch_size,
        "eval.sim_chunk": e.sim_chunk,
        "train.log_every": t.log_every,
        "train.eval_every": t.eval_every,
        "train.batch_size": t.batch_size,
        "train.accum_steps": t.accum_steps,
        "train.epochs": t.epochs,
        "train.gather_grad_world": t.gather_grad_world,
    }
    for name, value in at_least_one.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be at least 1")
    optional_at_least_one = {
        "data.test_num_frames": d.test_num_frames,
        "data.resize_short": d.resize_short,
        "train.max_steps": t.max_steps,
        "train.save_every": t.save_every,
    }
    for name, value in optional_at_least_one.items():
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} must be at least 1, or null (the default)")
    if d.num_workers != "auto" and (isinstance(d.num_workers, str) or d.num_workers < 0):
        raise ConfigError(
            f"data.num_workers={d.num_workers!r} must be auto (min(4, usable cores)), 0 (the main process) or more"
        )
    at_least_zero = {"train.seed": t.seed, "model.num_classes": m.num_classes}
    for name, value in at_least_zero.items():
        if value < 0:
            raise ConfigError(f"{name}={value} must be 0 or more")


def validate_devices(cfg: ExperimentConfig) -> None:
    """train.compile (retrieval and recognition only) and data.decode_device=cuda (torchcodec, no workers)."""
    t, m, d = cfg.train, cfg.model, cfg.data
    if t.compile and m.task not in (Task.retrieval, Task.recognition):
        raise ConfigError(
            f"train.compile=true covers retrieval and recognition models, not model.task={m.task}; "
            "set train.compile=null (the default) or false"
        )
    if d.decode_device == DecodeDevice.cuda and (d.decoder != Decoder.torchcodec or d.num_workers):
        raise ConfigError(
            f"data.decode_device=cuda needs data.decoder=torchcodec and data.num_workers=0 (CUDA decodes in the "
            f"training process); got data.decoder={d.decoder}, data.num_workers={d.num_workers}"
        )


def validate_values(cfg: ExperimentConfig) -> None:
    """Real numbers (finite, positive or 0 or more, some may be null), the fixed ranges (weights,
    drop-path, betas, crop scale, test crops, eval.split) and model.prompt_templates."""
    t, m, d, e = cfg.train, cfg.model, cfg.data, cfg.eval
    floats = {
        "train.lr": (t.lr, "positive"),
        "train.new_module_lr_mult": (t.new_module_lr_mult, "positive"),
        "train.eps": (t.eps, "positive"),
        "model.mug_lambda": (m.mug_lambda, "positive"),
        "train.weight_decay": (t.weight_decay, "0 or more"),
        "train.warmup": (t.warmup, "0 or more"),
        "train.freeze_text_for": (t.freeze_text_for, "0 or more"),
        "data.frame_cache_mb": (d.frame_cache_mb, "0 (off) or more"),
        "model.temperature": (m.temperature, "positive, or null for CLIP's learned scale"),
        "train.grad_clip": (t.grad_clip, "positive, or null for no clipping"),
    }
    for name, (value, rule) in floats.items():
        if value is None and "null" in rule:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and rule.startswith("positive")):
            raise ConfigError(f"{name}={value} must be {rule}")
    if m.context_length < 3:
        raise ConfigError(f"model.context_length={m.context_length} must be at least 3 (SOT, one word, EOT)")
    if not 0.0 < m.tab_weight < 1.0:
        raise ConfigError(f"model.tab_weight={m.tab_weight} must be in (0, 1)")
    if not 0.0 <= m.stan.drop_path < 1.0:
        raise ConfigError(f"model.stan.drop_path={m.stan.drop_path} must be in [0, 1)")
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas={list(t.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.98]")
    if len(d.crop_scale) != 2 or not 0.0 < d.crop_scale[0] <= d.crop_scale[1] <= 1.0:
        raise ConfigError(
            f"data.crop_scale={list(d.crop_scale)} must be two numbers in (0, 1], the smaller first, "
            "e.g. [0.5, 1.0]; [1.0, 1.0] turns the random crop off"
        )
    if d.test_crops not in (1, 3):
        raise ConfigError(f"data.test_crops={d.test_crops} must be 1 (centre) or 3 (left, centre, right)")
    if e.split not in ("train", "val", "test"):
        raise ConfigError(f"eval.split={e.split!r} must be train, val or test")
    if not m.prompt_templates or any("{}" not in p for p in m.prompt_templates):
        raise ConfigError(
            f"model.prompt_templates={list(m.prompt_templates)} must be a non-empty list of texts with "
            "{} where the class name goes, e.g. ['a video of {}.']"
        )


def validate_shards(cfg: ExperimentConfig) -> None:
    """data.dataset=webdataset: training shards named, a retrieval or recognition task, no data.mix,
    positive data.epoch_samples and data.shuffle_buffer."""
    m, d = cfg.model, cfg.data
    if d.dataset != "webdataset":
        return
    if not d.shards:
        raise ConfigError(
            "data.dataset=webdataset needs data.shards: the training shards, e.g. /data/webvid/{00000..01023}.tar"
        )
    if m.task not in (Task.retrieval, Task.recognition):
        raise ConfigError(
            "data.dataset=webdataset serves retrieval (captions) and recognition (labels), not "
            f"model.task={m.task.value}"
        )
    if d.mix:
        raise ConfigError(
            "data.mix does not apply to data.dataset=webdataset: list the image shards (img2dataset) in "
            "data.shards next to the video shards; they are mixed in proportion to their shards"
        )
    if (d.epoch_samples is not None and d.epoch_samples < 1) or d.shuffle_buffer < 1:
        raise ConfigError(
            f"data.epoch_samples={d.epoch_samples} and data.shuffle_buffer={d.shuffle_buffer} must be at least 1 "
            "(data.epoch_samples null: the shards' manifest.json)"
        )


def validate_frames_and_detection(cfg: ExperimentConfig) -> None:
    """STAN's temporal embedding covers the frames read; model.task=detection: its sizes, AVA data and
    data.ava's ranges."""
    m, d = cfg.model, cfg.data
    if m.branch == Branch.stan:
        for name, frames in (("data.num_frames", d.num_frames), ("data.test_num_frames", d.test_num_frames)):
            if frames is not None and frames > m.stan.max_frames:
                raise ConfigError(
                    f"{name}={frames} exceeds STAN's temporal embedding: raise model.stan.max_frames to at least "
                    f"{frames}"
                )
    if m.task == Task.detection:
        if m.detection.roi_size < 1 or not 0.0 <= m.detection.dropout < 1.0:
            raise ConfigError(
                f"model.detection: roi_size={m.detection.roi_size} must be at least 1 and dropout="
                f"{m.detection.dropout} in [0, 1)"
            )
        if d.dataset != "ava":
            raise ConfigError(
                f"model.task=detection needs box annotations: data.dataset=ava (AVA v2.2 files), got {d.dataset!r}"
            )
        if d.ava.frame_interval < 1 or d.ava.source_fps <= 0:
            raise ConfigError(
                f"data.ava.frame_interval={d.ava.frame_interval} must be at least 1 and data.ava.source_fps="
                f"{d.ava.source_fps} positive"
            )
        if d.ava.num_actions < 0 or cfg.eval.detections_per_keyframe < 0:
            raise ConfigError(
                f"data.ava.num_actions={d.ava.num_actions} and eval.detections_per_keyframe="
                f"{cfg.eval.detections_per_keyframe} must be 0 or more (0: the label map's actions; all detections)"
            )


def validate_files(cfg: ExperimentConfig, splits: Sequence[str] = ("train", "val", "test")) -> None:
    """The files the config names exist: model.weights (unless a hub spec), the ``splits``' annotation
    files, data.extra's files, each data.mix source's annotations (with "train"), and data.root."""
    if cfg.model.weights and not is_spec(cfg.model.weights):
        weights = Path(cfg.model.weights).expanduser()
        if not weights.exists():
            raise ConfigError(f"model.weights: {cfg.model.weights} does not exist")
        if not weights.is_dir():  # a HuggingFace CLIPModel folder, or one file
            _config_file(weights, "model.weights")
    for split in splits:
        ann = getattr(cfg.data, f"{split}_ann")
        if ann:
            _config_file(ann, f"data.{split}_ann", cfg.data.root)
    for key, value in cfg.data.extra.items():
        if not Path(value).expanduser().exists():
            raise ConfigError(f"data.extra.{key}: {value} does not exist{_inside_root_hint(value, cfg.data.root)}")
    for n, source in enumerate(cfg.data.mix if "train" in splits else []):
        ann = mix_data_config(cfg.data, source).train_ann
        if not ann or not Path(ann).expanduser().is_file():
            raise ConfigError(
                f"data.mix[{n}].train_ann: {ann} does not exist (each mixed source needs its annotation file)"
            )
    if cfg.data.root and not Path(cfg.data.root).expanduser().is_dir():
        raise ConfigError(f"data.root: {cfg.data.root} is not a folder")


def validate_recipe_keys(cfg: ExperimentConfig) -> None:
    """data.sample_fps, data.test_resize_short, the linear_then_cosine schedule and eval.select_on."""
    t, d = cfg.train, cfg.data
    if d.sample_fps <= 0:
        raise ConfigError(f"data.sample_fps={d.sample_fps} must be positive (frames per second of video)")
    for name in ("resize_short", "test_resize_short"):
        value = getattr(d, name)
        if value is not None and value < d.image_size:
            raise ConfigError(
                f"data.{name}={value} is below data.image_size={d.image_size}: the crop would not fit; "
                f"set {name} to at least image_size, or null"
            )
    if t.schedule == Schedule.linear_then_cosine:
        if not 0.0 < t.start_factor <= 1.0:
            raise ConfigError(f"train.start_factor={t.start_factor} must be in (0, 1]")
        if t.warmup_epochs < 0 or t.cosine_t_max <= 0:
            raise ConfigError(
                f"train.warmup_epochs={t.warmup_epochs} must be >= 0 and train.cosine_t_max={t.cosine_t_max} > 0"
            )
        begin = t.warmup_epochs if t.cosine_begin is None else t.cosine_begin
        if begin < t.warmup_epochs or (t.cosine_end is not None and t.cosine_end < begin):
            raise ConfigError(
                f"the schedule needs train.warmup_epochs <= train.cosine_begin <= train.cosine_end, got "
                f"{t.warmup_epochs}, {t.cosine_begin}, {t.cosine_end}"
            )
    for name, kinds in (("no_decay", t.no_decay), ("no_decay_new", t.no_decay_new or [])):
        unknown = sorted(set(kinds) - {"norm", "bias", "embedding", "logit_scale"})
        if unknown:
            raise ConfigError(f"train.{name}: {', '.join(unknown)} not among norm, bias, embedding, logit_scale")
    if cfg.eval.select_on == SelectOn.test and not d.test_ann:
        raise ConfigError("eval.select_on=test picks the best checkpoint on data.test_ann, which is not set")


def _config_file(path, key: str, root: Optional[str] = None) -> None:
    """A file a config key names must be a regular file (a FIFO would block the reader forever).
    ``root``: the data.root an annotation path was read inside, for the hint of a missing one."""
    try:
        regular_file(path, key)
    except UserError as err:
        hint = _inside_root_hint(path, root) if root and not Path(path).exists() else ""
        raise ConfigError(f"{err}{hint}") from None


def _inside_root_hint(path: str, root: Optional[str]) -> str:
    """When a dataset file is missing because it was written relative to the working folder
    rather than inside data.root (``data.root=d data.test_ann=d/test.jsonl``), the fix."""
    try:
        inside = Path(path).relative_to(root)
    except (TypeError, ValueError):
        return ""
    if not inside.parts or not Path(inside).exists():
        return ""
    return (
        f" (dataset files are relative to data.root={root}; {inside} exists in the working folder: "
        f"write it relative to data.root, or as an absolute path)"
    )


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
            f"{t.batch_size} / {t.accum_steps} = {micro} clips: accumulation shrinks the negatives. Set "
            f"train.batch_size={t.contrastive_batch * t.accum_steps} (or train.accum_steps=1 and "
            f"train.batch_size={t.contrastive_batch}), and train.chunk_size to the clips per process that fit in memory"
        )
    if t.freeze_text_for > 0 and (cfg.model.task != "retrieval" or cfg.model.freeze_text):
        why = (
            "model.freeze_text already keeps the text tower frozen throughout"
            if cfg.model.task == "retrieval"
            else f"model.task={cfg.model.task!r} trains no text tower"
        )
        raise ConfigError(
            f"train.freeze_text_for={t.freeze_text_for} freezes the text tower for the first steps of "
            f"video-text retrieval training, but {why}: remove train.freeze_text_for"
        )
    if cfg.model.task != "retrieval" and t.gather_grad_world > 1:
        raise ConfigError(
            f"train.gather_grad_world={t.gather_grad_world} reproduces the gradient scale of the authors' "
            f"all_gather in contrastive training, model.task=retrieval; model.task={cfg.model.task!r} "
            "gathers nothing: remove train.gather_grad_world"
        )
    if cfg.model.task != "retrieval":
        for name in ("contrastive_batch", "chunk_size"):
            if getattr(t, name) is not None:
                raise ConfigError(
                    f"train.{name} (gradient caching) needs a contrastive loss, model.task=retrieval; "
                    f"model.task={cfg.model.task!r} has no in-batch negatives, so train.accum_steps gives the "
                    f"full-batch gradient: remove train.{name}"
                )


CHAT_PARTS = ("projector", "branch", "llm")


def validate_chat(cfg: ExperimentConfig) -> None:
    """model.chat: what model.task=chat needs."""
    c = cfg.model.chat
    if cfg.model.task != Task.chat:
        return
    if not c.llava:
        raise ConfigError(
            "model.task=chat needs model.chat.llava: a LLaVA checkpoint folder or hub name, e.g. "
            "llava-hf/llava-1.5-7b-hf"
        )
    bad = [p for p in c.tune if p not in CHAT_PARTS]
    if bad or not c.tune:
        raise ConfigError(f"model.chat.tune={list(c.tune)}: choose a non-empty subset of {', '.join(CHAT_PARTS)}")
    if "branch" in c.tune and cfg.model.branch == Branch.none:
        raise ConfigError(
            "model.chat.tune names branch but model.branch=none has no parameters: remove it or set model.branch=stan"
        )
    for name in ("max_length", "max_new_tokens"):
        if getattr(c, name) < 1:
            raise ConfigError(f"model.chat.{name}={getattr(c, name)} must be at least 1")
    if c.temperature < 0 or not 0 < c.top_p <= 1:
        raise ConfigError(
            f"model.chat.temperature={c.temperature} must be >= 0 (0: greedy) and model.chat.top_p={c.top_p} in (0, 1]"
        )


def save_config(cfg: ExperimentConfig, path) -> None:
    from omegaconf import OmegaConf

    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

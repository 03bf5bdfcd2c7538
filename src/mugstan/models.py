"""Video models = backbone x branch x head, composed from a ``ModelConfig``.

    frames [B, T, 3, H, W] --backbone per frame--> VisionOutput [B*T, ...]
                           --branch (none | STAN)--> FrameFeatures: embeds [B, T, E], patches [B, T, P, D]
                           --head (mean | meanP | seqTransf | tdb_tab | mug)--> video Embeddings
    ids [N, L]             --backbone text tower--> TextOutput --head--> text Embeddings

``VideoTextModel`` (retrieval, zero-shot recognition, post-pretraining) returns the text and video
embeddings and the logit scale; ``VideoClassifier`` (fine-tuned recognition) is a
``VideoTextModel`` used as the video encoder plus a classifier on the head's video vector. Both
are called the same way by the engine, ``model(**inputs) -> dict of outputs``, and the loss lives
outside the model (``mugstan.losses.build_loss``). Every branch works with every head.

Parameter names: ``backbone.clip.*`` (open_clip's names), ``branch.*`` (STAN), ``head.*`` (the
head's modules), ``logit_scale.*``; a classifier's are ``encoder.*`` and ``classifier.*``.
"""

from __future__ import annotations

import re
from typing import Sequence, Union

import torch
import torch.nn as nn

from mugstan.backbones.build import build_clip
from mugstan.backbones.clip import CLIPBackbone, Tokenizer
from mugstan.branches.frames import FrameFeatures, NoBranch
from mugstan.branches.stan import STAN
from mugstan.config import Branch, Classifier, ConfigError, Head, ModelConfig, Task
from mugstan.data.transforms import normalize
from mugstan.engine.distributed import unwrap
from mugstan.heads.base import Embeddings, LogitScale
from mugstan.heads.base import Head as HeadModule
from mugstan.heads.classifier import LinearClassifier, TextInitClassifier
from mugstan.heads.clip2video import CLIP2VideoHead
from mugstan.heads.mean import Mean, MeanP
from mugstan.heads.mug import Mug
from mugstan.heads.seqtransf import SeqTransf


def build_branch(cfg: ModelConfig, backbone: CLIPBackbone) -> nn.Module:
    if cfg.branch == Branch.stan:
        s = cfg.stan
        return STAN(
            backbone, depth=s.depth, time_module=str(s.time_module), drop_path=s.drop_path, max_frames=s.max_frames
        )
    return NoBranch()


def build_head(cfg: ModelConfig, backbone: CLIPBackbone) -> HeadModule:
    width, heads = backbone.embed_dim, backbone.text_heads
    build = {
        Head.mean: lambda: Mean(),
        Head.meanP: lambda: MeanP(),
        Head.seqTransf: lambda: SeqTransf(width, heads, cfg.seq_layers),
        Head.tdb_tab: lambda: CLIP2VideoHead(
            width, heads, cfg.tab_centers, cfg.tab_weight, cfg.seq_layers, cfg.clip2video_compat
        ),
        Head.mug: lambda: Mug(cfg.mug_lambda, cfg.mug_mode, cfg.mug_compat),
    }[cfg.head]
    head = build()
    head.init_from_clip(backbone)  # seqTransf, TDB+TAB start from CLIP's text tower
    return head


def prompt_name(name: str) -> str:
    """A class name as a prompt writes it. A name written as one identifier is turned into lower-case
    words, as CLIP's and the STAN authors' class lists write them: HMDB-51's ``brush_hair`` -> "brush
    hair", UCF-101's ``ApplyEyeMakeup`` -> "apply eye makeup", ``YoYo`` -> "yo yo". A name that
    already holds spaces (Kinetics' "air drumming", an SSv2 template) is kept as written."""
    if " " in name.strip():
        return name
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ")
    return " ".join(words.split()).lower()


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """[template][class] prompt texts, each name written by ``prompt_name``."""
    return [[tpl.format(prompt_name(name)) for name in class_names] for tpl in templates]


def check_frames(frames: torch.Tensor, frame_mask: torch.Tensor) -> None:
    """frames [B, T, 3, H, W] and frame_mask [B, T] bool with at least one real frame per video, or ValueError."""
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    if frame_mask.shape != (b, t):
        raise ValueError(f"frame_mask must be [B, T] = {(b, t)}, got {tuple(frame_mask.shape)}")
    if not frame_mask.any(1).all():
        raise ValueError("every video needs at least one real frame (frame_mask all False in a row)")


class VideoTextModel(nn.Module):
    """A video encoder (backbone x branch x head) and the backbone's text tower scored by the head."""

    input_names = ("frames", "frame_mask", "ids", "text_mask")  # the batch entries ``forward`` takes

    def __init__(
        self, backbone: CLIPBackbone, branch: nn.Module, head: HeadModule, logit_scale: LogitScale, context_length: int
    ):
        super().__init__()
        self.backbone, self.branch, self.head, self.logit_scale = backbone, branch, head, logit_scale
        self.tokenizer = Tokenizer(context_length)

    # ---- video ------------------------------------------------------------------------------
    def frame_features(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> FrameFeatures:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> FrameFeatures (embeds [B, T, E], patches [B, T, P, D])."""
        if not torch.compiler.is_compiling():  # compiled (train.compile): checked before the graph
            check_frames(frames, frame_mask)
        vision = self.backbone.encode_frames(frames.flatten(0, 1), taps=self.branch.taps)
        return self.branch(vision, self.backbone, frame_mask)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Embeddings:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> the head's video Embeddings."""
        return self.head.encode_video(self.frame_features(frames, frame_mask).embeds, frame_mask)

    def video_vector(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> one unit vector per video [B, E']."""
        return self.head.video_vector(self.encode_video(frames, frame_mask))

    # ---- text -------------------------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor, text_mask: torch.Tensor) -> Embeddings:
        """ids [N, L] int64, text_mask [N, L] bool -> the head's text Embeddings."""
        return self.head.encode_text(self.backbone.encode_text(ids, text_mask))

    def tokenize(self, texts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (ids [N, L] int64, mask [N, L] bool), EOT always kept."""
        return self.tokenizer(texts)

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Prompt vectors per class, averaged over templates: [C, E'] unit vectors (``head.text_vector``).
        Each name goes into the templates as ``prompt_name`` writes it."""
        if not class_names:
            raise ConfigError("class names are needed (model.class_names or the dataset's class-name file)")
        prompts = [
            text for per_class in zip(*class_prompts(class_names, templates), strict=True) for text in per_class
        ]  # class-major
        device = self.logit_scale.log_scale.device
        ids, mask = self.tokenize(prompts)
        x = self.head.text_vector(self.backbone.encode_text(ids.to(device), mask.to(device)))
        return nn.functional.normalize(x.view(len(class_names), len(templates), -1).mean(1), dim=-1)

    # ---- scores -----------------------------------------------------------------------------
    def similarity(self, text: Embeddings, video: Embeddings, chunk: int = 256) -> torch.Tensor:
        """Scaled scores [N_text, N_video], computed by the head in blocks of ``chunk`` x ``chunk``."""
        return self.logit_scale() * self.head.similarity(text, video, chunk)

    def forward(
        self, frames: torch.Tensor, frame_mask: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor
    ) -> dict:
        """A batch of video-text pairs -> {"text": Embeddings, "video": Embeddings, "logit_scale": scalar}.

        Row i of text and video is a matching pair; ``mugstan.losses.ContrastiveLoss`` scores them.
        """
        return {
            "text": self.encode_text(ids, text_mask),
            "video": self.encode_video(frames, frame_mask),
            "logit_scale": self.logit_scale(),
        }

    def clamp_logit_scale(self) -> None:
        """Call after every optimiser step: keeps a learned scale <= 100."""
        self.logit_scale.clamp_()


class VideoClassifier(nn.Module):
    """Recognition: a ``VideoTextModel`` as the video encoder and a classifier on its video vector.

    classifier "text": cosine scores against the class-name prompt vectors, fixed (the STAN recipe);
    "text_trainable": the same, its class vectors trained; "linear": a plain linear layer. The text
    tower only computes the class vectors and is frozen.
    """

    input_names = ("frames", "frame_mask")

    def __init__(self, encoder: VideoTextModel, classifier: nn.Module):
        super().__init__()
        self.encoder, self.classifier = encoder, classifier

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> dict:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> {"logits": [B, C]}."""
        return {"logits": self.classifier(self.encoder.video_vector(frames, frame_mask))}

    def logit_scale(self) -> torch.Tensor:
        """The encoder's logit scale (logged; the classifier has its own fixed scale)."""
        return self.encoder.logit_scale()

    def clamp_logit_scale(self) -> None:
        self.encoder.clamp_logit_scale()


def build_classifier(cfg: ModelConfig, encoder: VideoTextModel, class_names: Sequence[str]) -> nn.Module:
    names = list(class_names) or list(cfg.class_names)
    num_classes = cfg.num_classes or len(names)
    if num_classes <= 0:
        raise ConfigError("recognition needs model.num_classes or class names (model.class_names / the dataset)")
    if names and len(names) != num_classes:
        raise ConfigError(f"model.num_classes={num_classes} but {len(names)} class names were given")
    if cfg.classifier in (Classifier.text, Classifier.text_trainable):
        if not names:
            raise ConfigError(
                f"model.classifier={cfg.classifier} needs class names; use model.classifier=linear without them"
            )
        return TextInitClassifier(
            encoder.class_embeddings(names, cfg.prompt_templates), trainable=cfg.classifier == Classifier.text_trainable
        )
    return LinearClassifier(encoder.head.vector_dim(encoder.backbone.embed_dim), num_classes)


def build_model(cfg: ModelConfig, class_names: Sequence[str] = ()) -> Union[VideoTextModel, VideoClassifier]:
    """The one factory: backbone from cfg.backbone / cfg.pretrained / cfg.weights, branch, head,
    and for ``model.task=recognition`` the classifier, for ``model.task=detection`` the RoI head
    (``mugstan.detection.model.ActionDetector``). ``model.task=chat`` builds the video chat model
    (``mugstan.chat``, a consumer of the video encoder: imported only then)."""
    if cfg.task == Task.chat:
        from mugstan.chat.model import build_chat_model

        return build_chat_model(cfg, lambda tower: build_branch(cfg, tower))
    backbone = build_clip(cfg.backbone, cfg.pretrained, cfg.weights, config=cfg.backbone_config)
    if cfg.context_length > backbone.context_length:
        raise ConfigError(
            f"model.context_length={cfg.context_length} exceeds the text tower's {backbone.context_length} positions "
            f"({cfg.backbone or 'this backbone'}): set model.context_length={backbone.context_length} or less"
        )
    if cfg.backbone is None and cfg.backbone_config is None:  # the weights file's architecture, recorded in the
        cfg.backbone_config = dict(
            backbone.architecture
        )  # config so that the run's checkpoints rebuild it without the file
    branch = build_branch(cfg, backbone)
    head = build_head(cfg, backbone)
    if cfg.head == Head.mug:  # Mug scores per-token text features: what only the pooled one reads (CoCa's CLS) gets an
        for p in (
            backbone.pooled_text_parameters()
        ):  # exactly zero gradient, so training it would only let weight decay shrink it
            p.requires_grad_(False)
    logit_scale = LogitScale(backbone.clip.logit_scale, cfg.temperature)
    backbone.clip.logit_scale.requires_grad_(False)  # superseded by the model's logit_scale
    model: nn.Module = VideoTextModel(backbone, branch, head, logit_scale, cfg.context_length)
    if cfg.eot_compat:  # the STAN authors' CLIPTokenize: long captions lose their EOT
        model.tokenizer = Tokenizer(cfg.context_length, keep_eot=False)
    if cfg.task == Task.recognition:
        backbone.freeze_text()  # the text tower only computes the class vectors
        model = VideoClassifier(model, build_classifier(cfg, model, class_names))
    elif cfg.task == Task.detection:  # an RoI head on the encoder's patch tokens (mugstan.detection)
        from mugstan.detection.model import build_detector

        names = list(class_names) or list(cfg.class_names)
        model = build_detector(model, cfg.num_classes or len(names), cfg.detection.roi_size, cfg.detection.dropout)
    if cfg.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
        branch.grad_checkpointing = True
    if cfg.freeze_backbone:
        backbone.requires_grad_(False)
    if cfg.freeze_text:
        backbone.freeze_text()
    model.train()
    return model


def model_inputs(model: nn.Module, batch: dict, device: torch.device, rows: slice = slice(None)) -> dict:
    """The entries of a collated batch that ``model`` (DDP-wrapped or not) takes, rows ``rows``, on
    ``device``; uint8 frames (a loader built with ``uint8=True``) are CLIP-normalised there."""
    inputs = {name: batch[name][rows].to(device, non_blocking=True) for name in unwrap(model).input_names}
    if inputs["frames"].dtype == torch.uint8:
        inputs["frames"] = normalize(inputs["frames"])
    return inputs

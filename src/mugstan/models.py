"""Video models = CLIP backbone x temporal module x head, built from a ``ModelConfig``.

``VideoTextModel`` (retrieval, zero-shot recognition, post-pretraining) and ``VideoClassifier``
(fine-tuned recognition) share the video side:

    frames [B, T, 3, H, W] --CLIP per frame--> [B*T, ...] --temporal module--> video features

temporal = "meanP" | "seqTransf" | "tdb_tab" (CLIP2Video) | "stan";  head = "cosine" | "mug".

Features travel as ``Embeddings(x, mask)``: dual-encoder heads give unit vectors ``x [N, E']``
(``mask`` None) whose dot products, times the logit scale, are the scores, so video embeddings can
be computed once and indexed; Mug gives unit per-frame / per-token features ``x [N, S, E]`` with
``mask [N, S]`` and scores them with ``mugstan.heads.mug`` in bounded-memory chunks.

Parameter names: ``backbone.clip.*`` (open_clip's names), ``temporal.*`` (the new modules),
``logit_scale.*``, ``classifier.*``. ``param_groups`` splits them for the optimiser.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mugstan.backbones.clip import CLIPBackbone, Tokenizer, build_clip
from mugstan.config import ModelConfig
from mugstan.heads.classifier import LinearClassifier, TextInitClassifier
from mugstan.heads.mug import mug_scores, mug_similarity
from mugstan.heads.similarity import LogitScale
from mugstan.losses import gather, gather_nograd, symmetric_infonce
from mugstan.temporal.clip2video import CLIP2VideoHead
from mugstan.temporal.meanp import MeanP, masked_mean
from mugstan.temporal.seqtransf import SeqTransf
from mugstan.temporal.stan import STAN

TEMPORAL_MODULES = ("meanP", "seqTransf", "tdb_tab", "stan")
HEADS = ("cosine", "mug")
TASKS = ("retrieval", "recognition")


class Embeddings(NamedTuple):
    """x: [N, E'] unit vectors (dual encoders) or [N, S, E] unit features (Mug); mask: [N, S] bool or None."""

    x: torch.Tensor
    mask: Optional[torch.Tensor] = None


def validate_model_config(cfg: ModelConfig) -> None:
    def check(field: str, value, choices) -> None:
        if value not in choices:
            raise ValueError(f"model.{field}={value!r} is not one of {', '.join(map(repr, choices))}")

    check("temporal", cfg.temporal, TEMPORAL_MODULES)
    check("head", cfg.head, HEADS)
    check("task", cfg.task, TASKS)
    check("mug_mode", cfg.mug_mode, ("simple", "full"))
    check("loss_reduction", cfg.loss_reduction, ("mean", "sum"))
    check("classifier", cfg.classifier, ("text", "linear"))
    if cfg.head == "mug" and cfg.temporal in ("seqTransf", "tdb_tab"):
        raise ValueError(f"model.head='mug' needs per-frame features: use temporal 'stan' or 'meanP', not {cfg.temporal!r}")


class VideoTextModel(nn.Module):
    """A video encoder and CLIP's text encoder with a similarity head."""

    def __init__(self, cfg: ModelConfig, backbone: CLIPBackbone):
        super().__init__()
        validate_model_config(cfg)
        self.cfg = cfg
        self.backbone = backbone
        width, heads = backbone.embed_dim, backbone.text_heads
        if cfg.temporal == "stan":
            self.temporal = STAN(backbone, **asdict(cfg.stan))
        elif cfg.temporal == "seqTransf":
            self.temporal = SeqTransf(width, heads, cfg.seq_layers)
            self.temporal.init_from_clip(backbone)
        elif cfg.temporal == "tdb_tab":
            self.temporal = CLIP2VideoHead(width, heads, cfg.tab_centers, cfg.tab_weight, cfg.seq_layers, cfg.clip2video_compat)
            self.temporal.init_from_clip(backbone)
        else:
            self.temporal = MeanP()
        self.logit_scale = LogitScale(backbone.clip.logit_scale, cfg.temperature)
        backbone.clip.logit_scale.requires_grad_(False)  # superseded by self.logit_scale
        self.tokenizer = Tokenizer(cfg.context_length)

    # ---- video ------------------------------------------------------------------------------
    def frame_embeddings(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> per-frame embeddings [B, T, E]."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        if frame_mask.shape != (b, t):
            raise ValueError(f"frame_mask must be [B, T] = {(b, t)}, got {tuple(frame_mask.shape)}")
        if not frame_mask.any(1).all():
            raise ValueError("every video needs at least one real frame (frame_mask all False in a row)")
        flat = frames.flatten(0, 1)
        if isinstance(self.temporal, STAN):
            vision = self.backbone.encode_frames(flat, taps=self.temporal.taps)
            return self.temporal(vision, self.backbone, frame_mask)
        return self.backbone.encode_frames(flat).embeds.view(b, t, -1)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Embeddings:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> Embeddings ([B, E'] or [B, T, E] + mask)."""
        per_frame = self.frame_embeddings(frames, frame_mask)
        if self.cfg.head == "mug":
            return Embeddings(F.normalize(per_frame, dim=-1), frame_mask)
        if isinstance(self.temporal, STAN):  # STAN: mean of the fused frame embeddings
            return Embeddings(F.normalize(masked_mean(per_frame, frame_mask), dim=-1))
        if isinstance(self.temporal, CLIP2VideoHead):
            return Embeddings(self.temporal.video(per_frame, frame_mask))
        return Embeddings(self.temporal(per_frame, frame_mask))

    # ---- text -------------------------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor, text_mask: torch.Tensor) -> Embeddings:
        """ids [N, L] int64, text_mask [N, L] bool -> Embeddings ([N, E'] or [N, L, E] + mask)."""
        out = self.backbone.encode_text(ids, text_mask)
        if self.cfg.head == "mug":
            return Embeddings(F.normalize(out.tokens, dim=-1), out.mask)
        if isinstance(self.temporal, CLIP2VideoHead):
            return Embeddings(self.temporal.text(out.pooled, out.tokens, out.mask))
        return Embeddings(F.normalize(out.pooled, dim=-1))

    def tokenize(self, texts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(texts)

    # ---- scores and loss --------------------------------------------------------------------
    def similarity(self, text: Embeddings, video: Embeddings, chunk: int = 128) -> torch.Tensor:
        """Scaled scores [N_text, N_video]; Mug in chunks of ``chunk`` x ``chunk``."""
        scale = self.logit_scale()
        if self.cfg.head == "mug":
            c = self.cfg
            return scale * mug_similarity(text.x, text.mask, video.x, video.mask, c.mug_lambda, c.mug_mode, c.mug_compat, chunk)
        return scale * text.x @ video.x.t()

    def loss(self, text: Embeddings, video: Embeddings) -> torch.Tensor:
        """Symmetric InfoNCE over the global batch (features all-gathered; row i matches row i)."""
        scale, c = self.logit_scale(), self.cfg
        tx, vx = gather(text.x), gather(video.x)
        if c.head == "mug":
            logits = scale * mug_scores(tx, gather_nograd(text.mask), vx, gather_nograd(video.mask),
                                        c.mug_lambda, c.mug_mode, c.mug_compat)
        elif isinstance(self.temporal, CLIP2VideoHead):
            return self.temporal.loss(tx, vx, scale, c.loss_reduction)
        else:
            logits = scale * tx @ vx.t()
        return symmetric_infonce(logits, c.loss_reduction)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.loss(self.encode_text(ids, text_mask), self.encode_video(frames, frame_mask))

    def clamp_logit_scale(self) -> None:
        """Call after every optimiser step: keeps a learned scale <= 100."""
        self.logit_scale.clamp_()

    # ---- optimiser ----------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Trainable parameters split into CLIP vs new modules and decay vs no decay.

        Each group: {"name", "params", "new": bool, "decay": bool}. No weight decay on norms,
        biases, embeddings (class / positional / temporal / token) and the logit scale.
        """
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            new = not name.startswith("backbone.")
            decay = p.dim() >= 2 and "embed" not in name and "logit_scale" not in name
            groups.setdefault((new, decay), []).append(p)
        return [
            {"name": f"{'new' if new else 'clip'}_{'decay' if decay else 'no_decay'}", "params": params, "new": new, "decay": decay}
            for (new, decay), params in sorted(groups.items())
        ]

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Prompt embeddings per class, averaged over templates: [C, E'] unit vectors (dual encoders)
        or [C, E] pooled EOT embeddings (Mug, whose video side pools frames the same way)."""
        if not class_names:
            raise ValueError("class names are needed (model.class_names or the dataset's class-name file)")
        prompts = [tpl.format(name) for name in class_names for tpl in templates]
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.logit_scale.log_scale.device), mask.to(self.logit_scale.log_scale.device)
        if self.cfg.head == "mug":
            x = F.normalize(self.backbone.encode_text(ids, mask).pooled, dim=-1)
        else:
            x = self.encode_text(ids, mask).x
        return F.normalize(x.view(len(class_names), len(templates), -1).mean(1), dim=-1)


class VideoClassifier(VideoTextModel):
    """Recognition: the video encoder of ``VideoTextModel`` and a classifier on its embedding.

    classifier "text": cosine classifier initialised from class-name prompt embeddings;
    "linear": a plain linear layer. The text tower is only used to initialise the classifier and
    is frozen.
    """

    def __init__(self, cfg: ModelConfig, backbone: CLIPBackbone, class_names: Sequence[str] = ()):
        super().__init__(cfg, backbone)
        names = list(class_names) or list(cfg.class_names)
        num_classes = cfg.num_classes or len(names)
        if num_classes <= 0:
            raise ValueError("recognition needs model.num_classes or class names (model.class_names / the dataset)")
        if names and len(names) != num_classes:
            raise ValueError(f"model.num_classes={num_classes} but {len(names)} class names were given")
        for name, p in backbone.clip.named_parameters():
            if not name.startswith("visual."):
                p.requires_grad_(False)
        if cfg.classifier == "text":
            if not names:
                raise ValueError("model.classifier='text' needs class names; use classifier='linear' without them")
            self.classifier = TextInitClassifier(self.class_embeddings(names, cfg.prompt_templates))
        else:
            dim = self.encode_dim()
            self.classifier = LinearClassifier(dim, num_classes)

    def encode_dim(self) -> int:
        e = self.backbone.embed_dim
        return 2 * e if isinstance(self.temporal, CLIP2VideoHead) and self.cfg.head != "mug" else e

    def video_embedding(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, H, W], frame_mask [B, T] -> [B, E'] (Mug: mean of the frame features)."""
        video = self.encode_video(frames, frame_mask)
        return video.x if video.mask is None else F.normalize(masked_mean(video.x, video.mask), dim=-1)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> logits [B, C]."""
        return self.classifier(self.video_embedding(frames, frame_mask))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)


def build_model(cfg: ModelConfig, class_names: Sequence[str] = ()) -> Union[VideoTextModel, VideoClassifier]:
    """The one factory: backbone from cfg.backbone / cfg.pretrained / cfg.weights, then the model."""
    validate_model_config(cfg)
    backbone = build_clip(cfg.backbone, cfg.pretrained, cfg.weights)
    if cfg.task == "recognition":
        model: VideoTextModel = VideoClassifier(cfg, backbone, class_names)
    else:
        model = VideoTextModel(cfg, backbone)
    if cfg.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
        if isinstance(model.temporal, STAN):
            model.temporal.grad_checkpointing = True
    if cfg.freeze_backbone:
        backbone.requires_grad_(False)
    model.train()
    return model

"""Spatio-temporal action detection on a video encoder's patch tokens (AVA; mmaction2's FastRCNN recipe).

    frames [B, T, 3, H, W] --encoder.frame_features--> patches [B, T, P, D] (STAN's branch tokens,
                                                      or CLIP's per-frame tokens for branch none)
        --masked mean over T, LayerNorm--> map [B, D, g, g] (P = g * g, row-major)
        --torchvision.ops.roi_align(boxes [N, 4] in 0-1, box_batch_index [N], roi_size, aligned)--> [N, D, r, r]
        --max over the r x r bins--> [N, D] --dropout--> Linear(D, C) --> logits [N, C]

One sigmoid per action (multi-label), binary cross-entropy (``mugstan.losses.DetectionLoss``). The
time pooling before RoIAlign and the spatial max pooling after it follow mmaction2's
``SingleRoIExtractor3D(with_temporal_pool=True)`` and ``BBoxHeadAVA`` (temporal average, spatial
max, dropout 0.5). The order of frames reaches the map only through the encoder: STAN's temporal
modules see it, CLIP per frame (branch none) does not, so its time-pooled map is order-blind.

The detector classifies boxes it is given (ground truth in training, a person detector's
proposals at test time); it does not regress them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import roi_align

from mugstan.config import ConfigError
from mugstan.heads.base import masked_mean


class ActionDetector(nn.Module):
    """A video encoder (``VideoTextModel``: backbone x branch; its head and text tower are unused and
    frozen) and an RoI head. ``forward(frames, frame_mask, boxes, box_batch_index) -> {"logits": [N, C]}``."""

    input_names = ("frames", "frame_mask", "boxes", "box_batch_index")

    def __init__(self, encoder: nn.Module, num_classes: int, roi_size: int = 8, dropout: float = 0.5):
        super().__init__()
        width = encoder.backbone.vision_width
        self.encoder = encoder
        self.grid = encoder.backbone.grid_size
        self.roi_size = roi_size
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def feature_map(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> time-pooled patch map [B, D, g, g]."""
        patches = self.encoder.frame_features(frames, frame_mask).patches  # [B, T, P, D]
        pooled = self.norm(masked_mean(patches, frame_mask))  # [B, P, D]
        b, p, d = pooled.shape
        g = self.grid
        if p != g * g:
            raise ValueError(f"{p} patch tokens do not form the backbone's {g} x {g} grid")
        return pooled.transpose(1, 2).reshape(b, d, g, g)

    def roi_features(
        self, feature_map: torch.Tensor, boxes: torch.Tensor, box_batch_index: torch.Tensor
    ) -> torch.Tensor:
        """map [B, D, g, g], boxes [N, 4] (x1, y1, x2, y2 in 0-1 of the frame), box_batch_index [N]
        int -> [N, D]: RoIAlign (``roi_size`` bins, aligned pixel model, adaptive sampling), then the
        maximum over the bins. Computed in fp32 (RoIAlign has no bf16 CPU kernel)."""
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or box_batch_index.shape != boxes.shape[:1]:
            raise ValueError(
                f"boxes must be [N, 4] and box_batch_index [N], got {tuple(boxes.shape)} and "
                f"{tuple(box_batch_index.shape)}"
            )
        rois = torch.cat([box_batch_index.to(boxes.dtype)[:, None], boxes], dim=1).float()
        pooled = roi_align(
            feature_map.float(),
            rois,
            output_size=self.roi_size,
            spatial_scale=float(self.grid),
            sampling_ratio=-1,
            aligned=True,
        )  # [N, D, r, r]
        return pooled.amax(dim=(2, 3))

    def forward(
        self, frames: torch.Tensor, frame_mask: torch.Tensor, boxes: torch.Tensor, box_batch_index: torch.Tensor
    ) -> dict:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool, boxes [N, 4] (0-1), box_batch_index [N]
        -> {"logits": [N, C]} (one sigmoid per action)."""
        feats = self.roi_features(self.feature_map(frames, frame_mask), boxes, box_batch_index)
        return {"logits": self.classifier(self.dropout(feats))}

    def logit_scale(self) -> torch.Tensor:
        """The encoder's logit scale (logged by the trainer; unused by detection)."""
        return self.encoder.logit_scale()

    def clamp_logit_scale(self) -> None:
        self.encoder.clamp_logit_scale()


def build_detector(encoder: nn.Module, num_classes: int, roi_size: int, dropout: float) -> ActionDetector:
    """Freeze what detection does not use (text tower, retrieval head, logit scale, CLIP's ln_post and
    projection: no gradient reaches them, which DDP would otherwise report) and add the RoI head."""
    if num_classes <= 0:
        raise ConfigError(
            "detection needs the classes: model.class_names (from the dataset's label map) or model.num_classes"
        )
    for name, p in encoder.backbone.clip.named_parameters():
        if not name.startswith("visual.") or name.startswith(("visual.ln_post", "visual.proj")):
            p.requires_grad_(False)
    for module in (encoder.head, encoder.logit_scale):
        module.requires_grad_(False)
    return ActionDetector(encoder, num_classes, roi_size, dropout)

"""Recognition classifiers on video embeddings [B, E]."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TextInitClassifier(nn.Module):
    """Cosine classifier whose class weights are the text embeddings of class-name prompts.

    weights [C, E]: normalised text embeddings (averaged over prompt templates). Logits =
    scale * cos(video, class weight). ``trainable=False`` keeps the weights fixed (the STAN recipe
    caches the class-name features once, under no_grad); ``True`` trains them from there.
    """

    def __init__(self, weights: torch.Tensor, scale: float = 100.0, trainable: bool = False):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(weights.detach().float(), dim=-1), requires_grad=trainable)
        self.scale = scale

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, E] -> logits [B, C]."""
        return self.scale * F.normalize(video, dim=-1) @ F.normalize(self.weight, dim=-1).t()


class LinearClassifier(nn.Module):
    """Plain linear layer on the video embedding (dropout, then Linear(E, C))."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(video))

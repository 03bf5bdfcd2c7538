"""Logit scale of the cosine heads: CLIP's learned temperature, or a fixed 1 / tau."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

MAX_LOG_SCALE = math.log(100.0)


class LogitScale(nn.Module):
    """Learned: stored as log(scale) (initialised from CLIP's ``logit_scale``), clamped to
    <= ln(100) by ``clamp_()`` after every optimiser step; scoring uses exp(stored value) as it is.
    Fixed: scale = 1 / temperature, not trained (STAN: tau = 0.01 MSR-VTT B/32, 0.02 B/16, 0.05 DiDeMo).
    """

    def __init__(self, init_log_scale: torch.Tensor, temperature: Optional[float] = None):
        super().__init__()
        self.fixed = temperature is not None
        if self.fixed:
            if temperature <= 0:
                raise ValueError(f"model.temperature must be positive, got {temperature}")
            self.register_buffer("log_scale", torch.tensor(math.log(1.0 / temperature)))
        else:
            self.log_scale = nn.Parameter(init_log_scale.detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        if not self.fixed:
            self.log_scale.clamp_(max=MAX_LOG_SCALE)

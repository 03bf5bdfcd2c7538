"""STAN: the spatial-temporal auxiliary branch over CLIP's last K vision layers (methods.md §4).

The CLIP stream is untouched. The branch reads the outputs of CLIP layers L-K .. L-1 and keeps
one state per video: a video-level class token ``cls [B, 1, D]`` and the patch tokens
``patches [B, P, T, D]`` (patch-major, time-minor: the released layout ``[B, 1 + P*T, D]`` is
``cat([cls, patches.flatten(1, 2)])``). At level k:

- entering: k = 0 builds the state from layer L-K (class token = mean over real frames of CLIP's
  class tokens averaged with the constant class position; patches get CLIP's spatial positions
  again, shared with the stem, plus a learned temporal embedding); k > 0 adds layer L-K+k's
  tokens (class: mean over real frames) to the branch state;
- temporal module: per patch location, attention over time (``self``) or a 3D convolution
  (``conv``), each ending in a zero-initialised Linear, so the module is the identity at step 0;
- spatial module: a copy of CLIP layer L-K+k run per frame, the class token repeated for every
  frame and its outputs averaged over the real frames.

Output: for each frame, ``backbone.fuse``: CLIP's final class token + the branch's class token ->
ln_post -> proj (for CoCa: the branch's class token added at the class position, then CoCa's
attentional pooler), and the branch's final patch tokens (``FrameFeatures``, see
``mugstan.branches.frames``).

Padded frames (``mask`` False) never reach real frames: they are excluded from every mean over
time, masked as keys of the temporal attention, and zeroed before the temporal convolution (so a
padded clip's real frames see what a shorter clip with the convolution's zero padding sees).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mugstan.backbones.clip import CLIPBackbone, VisionOutput
from mugstan.branches.frames import FrameFeatures
from mugstan.config import ConfigError
from mugstan.heads.base import masked_mean
from mugstan.heads.blocks import Attention, DropPath


def zero_linear(width: int) -> nn.Linear:
    """Linear(D, D) with weight and bias zero: a temporal module is the identity at step 0."""
    fc = nn.Linear(width, width)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    return fc


class TemporalAttention(nn.Module):
    """LayerNorm -> self-attention over time per patch location -> drop-path -> zero Linear."""

    def __init__(self, width: int, heads: int, drop_path: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.drop_path = DropPath(drop_path)
        self.temporal_fc = zero_linear(width)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """patches [B, P, T, D], mask [B, T] bool -> [B, P, T, D]."""
        b, p, t, d = patches.shape
        keys = mask.repeat_interleave(p, dim=0)[:, None, None, :]  # [B*P, 1, 1, T]
        y = self.attn(self.ln_1(patches.reshape(b * p, t, d)), keys)
        return patches + self.temporal_fc(self.drop_path(y)).view(b, p, t, d)


class TemporalConv(nn.Module):
    """Conv3d(D, D, 3, padding 1) over (time, rows, columns) -> drop-path -> zero Linear."""

    def __init__(self, width: int, drop_path: float):
        super().__init__()
        self.conv = nn.Conv3d(width, width, kernel_size=3, padding=1)
        self.drop_path = DropPath(drop_path)
        self.temporal_fc = zero_linear(width)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """patches [B, P, T, D] (patch index = row * g + column), mask [B, T] bool -> [B, P, T, D]."""
        b, p, t, d = patches.shape
        g = round(p ** 0.5)
        x = patches * mask[:, None, :, None].to(patches.dtype)
        x = x.view(b, g, g, t, d).permute(0, 4, 3, 1, 2)  # [B, D, T, g, g]
        y = self.conv(x).permute(0, 3, 4, 2, 1).reshape(b, p, t, d)
        return patches + self.temporal_fc(self.drop_path(y))


class SpatialBlock(nn.Module):
    """A copy of a CLIP vision block, run per frame with the video class token repeated."""

    def __init__(self, clip_block: nn.Module, drop_path: float):
        super().__init__()
        self.ln_1 = copy.deepcopy(clip_block.ln_1)
        self.attn = copy.deepcopy(clip_block.attn)  # nn.MultiheadAttention (SDPA inside)
        self.ln_2 = copy.deepcopy(clip_block.ln_2)
        self.mlp = copy.deepcopy(clip_block.mlp)
        self.drop_path = DropPath(drop_path)

    def forward(
        self, cls: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cls [B, 1, D], patches [B, P, T, D], mask [B, T] -> (cls, patches), same shapes."""
        b, p, t, d = patches.shape
        x = torch.cat([cls.unsqueeze(1).expand(b, t, 1, d), patches.transpose(1, 2)], dim=2)  # [B, T, 1+P, D]
        x = self.ln_1(x.reshape(b * t, 1 + p, d))
        y = self.drop_path(self.attn(x, x, x, need_weights=False)[0]).view(b, t, 1 + p, d)
        cls = cls + masked_mean(y[:, :, 0], mask).unsqueeze(1)
        patches = patches + y[:, :, 1:].transpose(1, 2)
        cls = cls + self.mlp(self.ln_2(cls))
        patches = patches + self.mlp(self.ln_2(patches))
        return cls, patches


class STAN(nn.Module):
    """The auxiliary branch. Build with the backbone it reads; call with that backbone's output.

    depth: K levels fed by CLIP layers L-K .. L-1; time_module: "self" | "conv";
    drop_path: rates linspace(0, drop_path, K); max_frames: size of the temporal embedding.
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        depth: int = 4,
        time_module: str = "self",
        drop_path: float = 0.1,
        max_frames: int = 64,
    ):
        super().__init__()
        n_layers, width, heads = backbone.vision_layers, backbone.vision_width, backbone.vision_heads
        if not 1 <= depth <= n_layers:
            raise ConfigError(
                f"model.stan.depth={depth} must be in 1..{n_layers}: the backbone has {n_layers} vision layers and "
                "each STAN level reads one of them"
            )
        if time_module not in ("self", "conv"):
            raise ConfigError(f"model.stan.time_module must be 'self' or 'conv', got {time_module!r}")
        self.first = n_layers - depth
        self.grad_checkpointing = False
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.time_embed = nn.Embedding(max_frames, width)
        if time_module == "self":
            self.temporal = nn.ModuleList([TemporalAttention(width, heads, r) for r in rates])
        else:
            self.temporal = nn.ModuleList([TemporalConv(width, r) for r in rates])
        blocks = backbone.visual.transformer.resblocks
        self.spatial = nn.ModuleList([SpatialBlock(blocks[self.first + k], r) for k, r in enumerate(rates)])

    @property
    def taps(self) -> list[int]:
        """The CLIP vision blocks whose outputs the branch reads."""
        return list(range(self.first, self.first + len(self.spatial)))

    def _level(self, k: int, cls: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor):
        return self.spatial[k](cls, self.temporal[k](patches, mask), mask)

    def forward(self, vision: VisionOutput, backbone: CLIPBackbone, mask: torch.Tensor) -> FrameFeatures:
        """vision: backbone.encode_frames(frames [B*T, 3, H, W], taps=self.taps); mask [B, T] bool.

        Returns per-frame fused embeddings [B, T, E] (not normalised; ``backbone.fuse``: CLIP adds
        the branch's class token to each frame's class token before ln_post and proj, CoCa before
        its attentional pooler) and the branch's patch tokens [B, T, P, D].
        """
        b, t = mask.shape
        cls, patches = self.video_state(vision, backbone, mask)
        last = vision.last.view(b, t, -1, vision.last.shape[-1])
        return FrameFeatures(backbone.fuse(last, cls), patches.transpose(1, 2))

    def video_state(
        self, vision: VisionOutput, backbone: CLIPBackbone, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The branch's final state: video class token [B, 1, D] and patch tokens [B, P, T, D]."""
        b, t = mask.shape
        if t > self.time_embed.num_embeddings:
            raise ConfigError(
                f"STAN's temporal embedding covers model.stan.max_frames={self.time_embed.num_embeddings} frames, "
                f"got {t}: raise model.stan.max_frames or lower data.num_frames / data.test_num_frames"
            )
        visual = backbone.visual
        pos = visual.positional_embedding
        d = vision.last.shape[-1]
        for k, layer in enumerate(self.taps):
            h = vision.hidden[layer].view(b, t, -1, d)  # [B, T, 1+P, D]
            frame_cls = masked_mean(h[:, :, 0], mask).unsqueeze(1)  # [B, 1, D]
            if k == 0:
                cls = (frame_cls + (visual.class_embedding + pos[0]).to(h.dtype)) / 2
                patches = (h[:, :, 1:] + pos[1:].to(h.dtype)).transpose(1, 2)  # [B, P, T, D]
                patches = patches + self.time_embed.weight[:t].to(h.dtype)
            else:
                cls = cls + frame_cls
                patches = patches + h[:, :, 1:].transpose(1, 2)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                cls, patches = checkpoint(self._level, k, cls, patches, mask, use_reentrant=False)
            else:
                cls, patches = self._level(k, cls, patches, mask)
        return cls, patches

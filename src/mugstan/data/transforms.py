"""Clip transforms on uint8 frame tensors [T, 3, H, W] (or [V, T, 3, H, W] for views).

Every frame of a clip gets the same crop and flip (the geometry must not jitter over time). All
operations are batched tensor ops (torchvision.transforms.v2.functional), no PIL per frame.
Horizontal flipping is off by default: it turns "moves left" into "moves right".

Resizing follows ``data.interpolation`` (``INTERPOLATIONS``): "bicubic" (antialiased, PIL's
BICUBIC filter: CLIP4Clip's and CLIP2Video's torchvision transforms on PIL images; a long side of
int(short x long / short) as torchvision computes it) or "bilinear" (OpenCV's INTER_LINEAR, no
antialiasing: mmcv.imresize in the STAN fork's mmaction pipeline; a long side rounded half up as
mmcv.rescale_size does). With "fast" the decoder has already scaled the short side (FFmpeg's
bilinear, ``mugstan.data.video``) and crops are resized bicubic.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torchvision.transforms.v2.functional as TF

# The pixel statistics every CLIP (OpenAI's, open_clip's, CoCa) was trained with: ``normalize`` applies them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


INTERPOLATIONS = ("fast", "bicubic", "bilinear")  # data.interpolation


def resize(frames: torch.Tensor, height: int, width: int, interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 [..., 3, H, W] -> uint8 [..., 3, height, width]: "bilinear" is OpenCV's INTER_LINEAR
    (half-pixel centres, two taps, no antialiasing), anything else bicubic with antialiasing."""
    if frames.shape[-2:] == (height, width):
        return frames
    if interpolation != "bilinear":
        return TF.resize(frames, [height, width], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    flat = frames.reshape(-1, *frames.shape[-3:]).float()
    out = torch.nn.functional.interpolate(
        flat, size=(height, width), mode="bilinear", align_corners=False, antialias=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8).reshape(*frames.shape[:-2], height, width)


def resize_short(frames: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """[..., 3, H, W] -> short side ``size`` (aspect kept). The long side: int(size x long / short)
    (torchvision's Resize), rounded half up with "bilinear" (mmcv's Resize(scale=(-1, size)))."""
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    long = max(h, w) * size / min(h, w)
    long = int(long + 0.5) if interpolation == "bilinear" else int(long)
    return resize(frames, *((size, long) if h <= w else (long, size)), interpolation)


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    return TF.center_crop(frames, [size, size])


def three_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[T, 3, H, W] -> [3, T, 3, size, size]: start, centre and end of the long side."""
    h, w = frames.shape[-2:]
    if w >= h:
        offsets = [(0, (h - size) // 2, 0), (1, (h - size) // 2, (w - size) // 2), (2, (h - size) // 2, w - size)]
    else:
        offsets = [(0, 0, (w - size) // 2), (1, (h - size) // 2, (w - size) // 2), (2, h - size, (w - size) // 2)]
    return torch.stack([frames[..., top : top + size, left : left + size] for _, top, left in offsets])


def random_resized_crop(
    frames: torch.Tensor,
    size: int,
    scale: Sequence[float] = (0.5, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """One random area/aspect crop shared by all frames, resized to size x size."""
    h, w = frames.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            return resize(frames[..., top : top + ch, left : left + cw], size, size, interpolation)
    return center_crop(resize_short(frames, size, interpolation), size)


def normalize(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] on any device -> ``dtype``, CLIP mean/std normalised.

    Computed in float32 in two in-place passes, then cast. Training on a GPU, the loader can hand
    over uint8 clips (``build_dataset(..., uint8=True)``: a quarter of the bytes through shared
    memory, pinning and PCIe) and the batch is normalised on the GPU:
    ``normalize(batch["frames"].to(device, non_blocking=True))``, uint8 [B, T, 3, S, S] in.
    """
    if frames.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 frames, got {frames.dtype}")
    mean = torch.tensor(CLIP_MEAN, device=frames.device).mul_(255).view(3, 1, 1)
    scale = torch.tensor(CLIP_STD, device=frames.device).mul_(255).reciprocal_().view(3, 1, 1)
    x = frames.to(torch.float32).sub_(mean).mul_(scale)
    return x if dtype == torch.float32 else x.to(dtype)


class ClipTransform:
    """Training: resize the short side, random resized crop (+ optional flip); testing: resize
    short side + centre crop (or three crops, giving [3, T, 3, S, S]), every resize in
    ``interpolation`` (``INTERPOLATIONS``). Output is CLIP-normalised float, or the uint8 crops
    with ``uint8=True`` (normalised later, on the training device, by ``normalize``)."""

    def __init__(
        self,
        size: int,
        train: bool,
        crop_scale: Sequence[float] = (0.5, 1.0),
        hflip: bool = False,
        crops: int = 1,
        resize: Optional[int] = None,
        uint8: bool = False,
        interpolation: str = "fast",
    ):
        if crops not in (1, 3):
            raise ValueError(f"data.test_crops must be 1 or 3, got {crops}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"data.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        self.size, self.train, self.crop_scale, self.hflip, self.crops = size, train, tuple(crop_scale), hflip, crops
        self.resize = resize or size
        self.uint8, self.interpolation = uint8, interpolation

    def crop(self, frames: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The geometry alone: uint8 [T, 3, H, W] -> uint8 [T, 3, S, S] (or [3, T, 3, S, S])."""
        mode = self.interpolation
        if self.train:
            if self.crop_scale == (1.0, 1.0):
                frames = center_crop(resize_short(frames, self.resize, mode), self.size)
            else:
                if mode != "fast":  # the frames come at full size: the short side first, as the authors' pipelines
                    frames = resize_short(frames, self.resize, mode)
                frames = random_resized_crop(
                    frames, self.size, self.crop_scale, generator=generator, interpolation=mode
                )
            if self.hflip and torch.rand(1, generator=generator).item() < 0.5:
                frames = frames.flip(-1)
        else:
            frames = resize_short(frames, self.resize, mode)
            frames = three_crop(frames, self.size) if self.crops == 3 else center_crop(frames, self.size)
        return frames.contiguous()

    def __call__(self, frames: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> float [T, 3, S, S] (or [3, T, 3, S, S] with three crops); uint8
        of the same shape with ``uint8=True``.

        generator: the source of the random crop and flip (per sample, for reproducible runs).
        """
        frames = self.crop(frames, generator)
        return frames if self.uint8 else normalize(frames)

"""``train.compile``: ``torch.compile`` of a model's video encoder and text tower, in place.

    compile_model(model)            # VideoTextModel or VideoClassifier (its encoder)

What is compiled: ``encode_video`` (backbone over every frame, branch, head) and ``encode_text``
(text tower, head), each replaced on the instance by a compiled version of itself. Parameter
names, ``state_dict`` and checkpoints stay as they are (no ``_orig_mod.`` prefix), and every
caller (training, gradient caching, evaluation, a DDP wrapper) goes through the compiled code.
The loss, the classifier and the optimiser stay eager: they are a few small kernels per step.

Recompilation stays bounded: the batch dimension of every input is marked dynamic before the
first call (``torch._dynamo.maybe_mark_dynamic``), so a last partial batch, gradient-caching
chunks and evaluation batches of another size reuse the same graph. What does compile again,
once each: grad mode (training vs ``no_grad`` evaluation and gradient caching's first pass),
``model.train()`` vs ``eval()``, a different frame count (``data.test_num_frames``), a batch of
one clip (PyTorch specialises sizes 0 and 1).

The frame checks of ``VideoTextModel.frame_features`` read tensor values (a graph break); the
compiled ``encode_video`` runs them eagerly before entering the graph (``check_frames``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from mugstan.models import VideoClassifier, VideoTextModel, check_frames


def resolve_compile(compile: bool | None, device: torch.device) -> bool:
    """train.compile -> whether to compile: null (auto) is on for CUDA and off on a CPU.

    On this project's 2-core development CPU compiling a tiny STAN (inductor, forward + backward)
    took minutes before the first step, for a model whose whole step takes milliseconds
    (benchmarks/results/compile_cpu.md); on CUDA the kernels are fused and launches cut.
    """
    if compile is None:
        return device.type == "cuda"
    return bool(compile)


def _dynamic_batch(fn: Callable, backend: str) -> Callable:
    """``fn`` compiled, with dimension 0 of every tensor argument marked dynamic on each call."""
    compiled = torch.compile(fn, backend=backend)

    @functools.wraps(fn)
    def call(*args):
        for a in args:
            if isinstance(a, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(a, 0)
        return compiled(*args)

    return call


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile ``model``'s ``encode_video`` and ``encode_text`` in place (see the module doc);
    returns ``model``. backend: torch.compile's ("inductor"; the tests use "aot_eager", which
    traces the same graphs forward and backward without generating kernels)."""
    encoder = model.encoder if isinstance(model, VideoClassifier) else model
    if not isinstance(encoder, VideoTextModel):
        raise TypeError(f"train.compile covers retrieval and recognition models, not {type(model).__name__}")
    video = _dynamic_batch(encoder.encode_video, backend)

    def encode_video(frames: torch.Tensor, frame_mask: torch.Tensor):
        check_frames(frames, frame_mask)  # eager: it reads the mask's values
        return video(frames, frame_mask)

    encoder.encode_video = encode_video
    encoder.encode_text = _dynamic_batch(encoder.encode_text, backend)
    return model

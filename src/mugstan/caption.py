"""``mugstan caption VIDEO [VIDEO ...] --checkpoint PATH [--beam N] [--max-tokens M]``: captions from CoCa's decoder.

A model with a CoCa backbone (``model.backbone: coca_ViT-B-32`` ...) keeps CoCa's multimodal text
decoder. For a video, the attentional pooler's caption queries read the STAN-fused final tokens of
all its frames at once (``CoCaBackbone.caption_tokens``: the branch's video class token added at
every frame's class position, as in the retrieval embedding), and the decoder generates from those
Q-1 visual tokens. Without a branch, a one-frame video gets exactly CoCa's image captioning input.

Decoding (``generate``) is batched over videos and beams, one decoder pass per step:
- greedy (``beams=1``): the most likely token at every step; deterministic;
- beam search (``beams=K``): the K best prefixes by summed log-probability; a beam that has emitted
  EOT keeps its score and stays in the set; the answer is the beam with the best score per
  generated token (``length_penalty`` 1, as open_clip's default).
``min_tokens`` forbids EOT before that many caption tokens (open_clip's ``min_seq_len=5``, which
counts SOT, is ``min_tokens=4``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from mugstan.backbones.clip import EOT_TOKEN, SOT_TOKEN
from mugstan.backbones.coca import CoCaBackbone
from mugstan.branches.stan import STAN
from mugstan.engine.distributed import device_arg
from mugstan.errors import ArgumentError, MismatchError


def video_encoder(model):
    """The ``VideoTextModel`` inside a loaded model (a recognition model's encoder)."""
    return getattr(model, "encoder", model)


@torch.no_grad()
def visual_tokens(model, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """frames [B, T, 3, H, W], frame_mask [B, T] bool -> the decoder's visual tokens [B, Q-1, E]."""
    model = video_encoder(model)
    backbone = model.backbone
    if not isinstance(backbone, CoCaBackbone):
        raise MismatchError(f"captions need a CoCa backbone (model.backbone: coca_ViT-B-32, coca_ViT-L-14); this model's "
                         f"backbone is {type(backbone).__name__}, which has no caption decoder")
    b, t = frame_mask.shape
    vision = backbone.encode_frames(frames.flatten(0, 1), taps=model.branch.taps)
    last = vision.last.view(b, t, -1, vision.last.shape[-1])  # [B, T, 1+P, D]
    cls = model.branch.video_state(vision, backbone, frame_mask)[0] if isinstance(model.branch, STAN) else None
    return backbone.caption_tokens(last, frame_mask, cls)


@torch.no_grad()
def generate(backbone: CoCaBackbone, visual: torch.Tensor, beams: int = 1, max_tokens: int = 30,
             min_tokens: int = 0, length_penalty: float = 1.0) -> list[list[int]]:
    """visual [B, Q-1, E] -> per video the generated token ids (without SOT; EOT and what follows dropped).

    beams: 1 = greedy, K > 1 = beam search of width K; max_tokens: at most this many tokens after
    SOT (EOT included); min_tokens: EOT is not allowed before this many caption tokens.
    """
    limit = backbone.clip.text_decoder.context_length - 1
    if not 1 <= max_tokens <= limit:
        raise ArgumentError(f"--max-tokens must be in 1..{limit} (CoCa's decoder context), got {max_tokens}")
    if beams < 1:
        raise ArgumentError(f"--beam must be at least 1, got {beams}")
    b, k, device = visual.shape[0], beams, visual.device
    vis = visual.repeat_interleave(k, dim=0)  # [B*K, Q-1, E], beam-minor
    ids = torch.full((b * k, 1), SOT_TOKEN, dtype=torch.long, device=device)
    score = torch.zeros(b, k, device=device)
    score[:, 1:] = float("-inf")  # the K beams start as one prefix: expand only the first
    done = torch.zeros(b, k, dtype=torch.bool, device=device)
    length = torch.zeros(b, k, device=device)  # generated tokens, EOT included
    for step in range(max_tokens):
        logp = F.log_softmax(backbone.next_token_logits(vis, ids).float(), dim=-1)
        vocab = logp.shape[-1]
        logp = logp.view(b, k, vocab)
        if step < min_tokens:
            logp[..., EOT_TOKEN] = float("-inf")
        finished = torch.full((vocab,), float("-inf"), device=device)
        finished[0] = 0.0  # a finished beam continues with padding only, at no cost
        logp = torch.where(done.unsqueeze(-1), finished, logp)
        score, index = (score.unsqueeze(-1) + logp).view(b, k * vocab).topk(k, dim=1)  # [B, K]
        beam, token = index // vocab, index % vocab
        prefix = ids.view(b, k, -1).gather(1, beam.unsqueeze(-1).expand(-1, -1, ids.shape[1]))
        ids = torch.cat([prefix, token.unsqueeze(-1)], dim=-1).view(b * k, -1)
        was_done = done.gather(1, beam)
        length = length.gather(1, beam) + (~was_done).float()
        done = was_done | (token == EOT_TOKEN)
        if done.all():
            break
    best = (score / length.clamp(min=1) ** length_penalty).argmax(dim=1)  # [B]
    chosen = ids.view(b, k, -1)[torch.arange(b, device=device), best, 1:].tolist()
    return [seq[: seq.index(EOT_TOKEN)] if EOT_TOKEN in seq else seq for seq in chosen]


@torch.no_grad()
def caption(model, frames: torch.Tensor, frame_mask: torch.Tensor, beams: int = 1, max_tokens: int = 30,
            min_tokens: int = 0) -> list[str]:
    """frames [B, T, 3, H, W], frame_mask [B, T] bool -> one caption per video."""
    encoder = video_encoder(model)
    visual = visual_tokens(encoder, frames, frame_mask)
    ids = generate(encoder.backbone, visual, beams, max_tokens, min_tokens)
    return [encoder.tokenizer.decode(seq) for seq in ids]


def can_caption(model) -> bool:
    """Whether a loaded model has a caption decoder (a CoCa backbone)."""
    return isinstance(video_encoder(model).backbone, CoCaBackbone)


def caption_file(model, cfg, path, start: Optional[float] = None, end: Optional[float] = None, frames: Optional[int] = None,
                 beams: int = 1, max_tokens: int = 30, min_tokens: int = 0) -> str:
    """Caption the window [start, end] seconds (default: all) of a video file, its frames sampled and
    transformed as evaluation does (``cfg``: the checkpoint's ExperimentConfig, None for a converted
    file). ``VideoError`` for a file that cannot be decoded."""
    from mugstan.config import DataConfig
    from mugstan.data.datasets import Clip, ClipReader

    encoder = video_encoder(model)
    device = encoder.logit_scale.log_scale.device
    data = cfg.data if cfg else DataConfig(image_size=encoder.backbone.image_size)
    reader = ClipReader(dataclasses.replace(data, test_clips=1, test_crops=1), train=False, num_frames=frames)
    frames, mask = reader.read(Clip(str(Path(path).expanduser()), start, end), 0)  # [T, 3, S, S], [T] (False: fps padding)
    return caption(model, frames.unsqueeze(0).to(device), mask.unsqueeze(0).to(device), beams, max_tokens, min_tokens)[0]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--checkpoint", required=True, help="checkpoint of a model with a CoCa backbone (folder, .safetensors or hf-hub:org/name)")
    parser.add_argument("--beam", type=int, default=1, help="beam width; 1 = greedy, deterministic (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=30, help="longest caption in tokens, EOT included (default: %(default)s)")
    parser.add_argument("--min-tokens", type=int, default=0, help="no EOT before this many tokens (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: the checkpoint's test frames)")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu", help="where the model runs: cpu, cuda, cuda:1, ... (default here: %(default)s; cuda wherever there is one)")


def main(args: argparse.Namespace) -> int:
    from mugstan.data.video import VideoError
    from mugstan.engine.checkpoint import load_model

    model, cfg = load_model(args.checkpoint, torch.device(args.device))
    if not can_caption(model):
        raise SystemExit(f"error: {args.checkpoint} has a {type(video_encoder(model).backbone).__name__}, which has no caption "
                         "decoder; captions need a model with a CoCa backbone (model.backbone: coca_ViT-B-32, coca_ViT-L-14)")
    failed = 0
    for path in args.videos:
        try:
            text = caption_file(model, cfg, path, frames=args.frames, beams=args.beam, max_tokens=args.max_tokens, min_tokens=args.min_tokens)
        except VideoError as err:
            print(f"{path}\terror: {err}")
            failed += 1
            continue
        print(f"{path}\t{text}")
    return 1 if failed else 0

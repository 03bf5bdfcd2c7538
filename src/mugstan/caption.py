"""``mugstan caption VIDEO [VIDEO ...] --checkpoint PATH [decoding options]``: captions from CoCa's decoder.

A model with a CoCa backbone (``model.backbone: coca_ViT-B-32`` ...) keeps CoCa's multimodal text
decoder. For a video, the attentional pooler's caption queries read the STAN-fused final tokens of
all its frames at once (``CoCaBackbone.caption_tokens``: the branch's video class token added at
every frame's class position, as in the retrieval embedding), and the decoder generates from those
Q-1 visual tokens. Without a branch, a one-frame video gets exactly CoCa's image captioning input.

Decoding (``generate``) is ``open_clip.CoCa.generate``'s, with its options and defaults
(``Decoding``), batched over videos and beams, one decoder pass per step. Lengths count the start
token (SOT), as open_clip's do: at most ``seq_len`` tokens in all, no end token (EOT) while fewer
than ``min_seq_len``.

- ``beam_search`` (the default; transformers' ``BeamSearchScorer`` as open_clip drives it): a
  beam's score is the sum of the *raw logits* of its tokens (open_clip applies no log-softmax); at
  each step the 2G best (beam, token) pairs are ranked, an EOT among the first G closes that beam
  as a hypothesis scored ``sum / (its length with SOT and EOT)``, the first G other pairs are the
  next beams. A video is done when it holds G hypotheses and the best pair of the step, divided by
  the length, cannot beat the worst of them; at ``seq_len`` the open beams join as hypotheses
  (``sum / length``), and the best hypothesis is the caption. ``num_beams`` in
  ``num_beam_groups`` groups: open_clip adds no diversity penalty, so the groups are identical
  copies of one search of width G = num_beams / num_beam_groups (the default 6 in 3: width 2).
- ``top_k`` / ``top_p`` sampling: the logits (EOT masked before ``min_seq_len``, the repetition
  penalty applied) keep their ``top_k`` best tokens, or the smallest set of best tokens holding
  ``top_p`` of the probability (transformers' ``TopK`` / ``TopPLogitsWarper``), are divided by
  ``temperature``, and one token is drawn (``torch.multinomial``, from ``seed``); a caption stops
  at EOT or at token 0 (open_clip's pad id), and the last position is forced to EOT. ``top_k``
  with ``top_k: 1`` is greedy decoding.

``repetition_penalty`` p (transformers' ``RepetitionPenaltyLogitsProcessor``, all modes): the
logit of every token already in the prefix is divided by p where positive, multiplied where
negative. The returned caption is the generated tokens before the first EOT (and, when sampling,
before a 0).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from mugstan.backbones.clip import EOT_TOKEN, SOT_TOKEN
from mugstan.backbones.coca import CoCaBackbone
from mugstan.branches.stan import STAN
from mugstan.engine.distributed import device_arg
from mugstan.errors import ArgumentError, MismatchError

PAD_TOKEN = 0  # open_clip's CoCa pad id: padding after a finished caption; sampling stops on it
GENERATIONS = ("beam_search", "top_k", "top_p")


@dataclass
class Decoding:
    """``open_clip.CoCa.generate``'s options, with its defaults."""

    generation: str = "beam_search"  # "beam_search" | "top_k" | "top_p" (open_clip's generation_type)
    seq_len: int = 30  # longest output in tokens, SOT and EOT included
    min_seq_len: int = 5  # no EOT while the sequence (SOT included) is shorter than this
    num_beams: int = 6
    num_beam_groups: int = 3
    top_k: int = 1  # top_k sampling: keep this many best tokens (1: greedy)
    top_p: float = 0.1  # top_p sampling: keep the best tokens holding this much probability
    temperature: float = 1.0  # sampling: logits / temperature after top-k / top-p
    repetition_penalty: float = 1.0
    seed: int = 0  # the sampling draws

    def check(self, context: Optional[int] = None) -> None:
        """ArgumentError naming the option that open_clip (or its transformers parts) would refuse;
        ``context``: the decoder's (None: not checked yet)."""
        if self.generation not in GENERATIONS:
            raise ArgumentError(f"--generation {self.generation}: must be one of {', '.join(GENERATIONS)}")
        if not 1 <= self.min_seq_len < self.seq_len:
            raise ArgumentError(
                f"--seq-len {self.seq_len} and --min-seq-len {self.min_seq_len}: need 1 <= min-seq-len < seq-len"
            )
        if context is not None and self.seq_len > context + 1:
            raise ArgumentError(
                f"--seq-len {self.seq_len}: at most {context + 1} (CoCa's decoder reads at most {context} tokens)"
            )
        if self.generation == "beam_search" and not (
            self.num_beams > 1 and self.num_beam_groups >= 1 and self.num_beams % self.num_beam_groups == 0
        ):
            raise ArgumentError(
                f"--num-beams {self.num_beams} --num-beam-groups {self.num_beam_groups}: beam search needs "
                "more than one beam, in groups that divide them"
            )
        if self.top_k < 1 or not 0.0 <= self.top_p <= 1.0 or self.temperature <= 0 or self.repetition_penalty <= 0:
            raise ArgumentError(
                f"--top-k {self.top_k} must be at least 1, --top-p {self.top_p} in [0, 1], --temperature "
                f"{self.temperature} and --repetition-penalty {self.repetition_penalty} positive"
            )


def video_encoder(model):
    """The ``VideoTextModel`` inside a loaded model (a recognition model's encoder)."""
    return getattr(model, "encoder", model)


@torch.no_grad()
def visual_tokens(model, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """frames [B, T, 3, H, W], frame_mask [B, T] bool -> the decoder's visual tokens [B, Q-1, E]."""
    model = video_encoder(model)
    backbone = model.backbone
    if not isinstance(backbone, CoCaBackbone):
        raise MismatchError(
            f"captions need a CoCa backbone (model.backbone: coca_ViT-B-32, coca_ViT-L-14); this model's "
            f"backbone is {type(backbone).__name__}, which has no caption decoder"
        )
    b, t = frame_mask.shape
    vision = backbone.encode_frames(frames.flatten(0, 1), taps=model.branch.taps)
    last = vision.last.view(b, t, -1, vision.last.shape[-1])  # [B, T, 1+P, D]
    cls = model.branch.video_state(vision, backbone, frame_mask)[0] if isinstance(model.branch, STAN) else None
    return backbone.caption_tokens(last, frame_mask, cls)


def process_logits(logits: torch.Tensor, ids: torch.Tensor, opts: Decoding) -> torch.Tensor:
    """open_clip's logit processors: logits [N, V] float, prefixes ids [N, L] -> [N, V] with EOT at
    -inf while L < min_seq_len, then the repetition penalty on the tokens of each prefix."""
    if ids.shape[1] < opts.min_seq_len:
        logits = logits.clone()
        logits[:, EOT_TOKEN] = float("-inf")
    if opts.repetition_penalty != 1.0:
        seen = logits.gather(1, ids)
        logits = logits.scatter(
            1, ids, torch.where(seen < 0, seen * opts.repetition_penalty, seen / opts.repetition_penalty)
        )
    return logits


def warp_logits(logits: torch.Tensor, opts: Decoding) -> torch.Tensor:
    """Top-k or top-p filtering of logits [N, V] (removed tokens at -inf), as transformers' warpers."""
    if opts.generation == "top_k":
        kth = logits.topk(min(opts.top_k, logits.shape[-1]))[0][..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    ascending, order = torch.sort(logits, descending=False)
    remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - opts.top_p
    remove[..., -1:] = False  # the best token always stays
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


@torch.no_grad()
def sample(backbone: CoCaBackbone, visual: torch.Tensor, opts: Decoding) -> torch.Tensor:
    """Top-k / top-p sampling: visual [B, Q-1, E] -> ids [B, <= seq_len] (SOT first; 0 after the end)."""
    device = visual.device
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    ids = torch.full((visual.shape[0], 1), SOT_TOKEN, dtype=torch.long, device=device)
    while ids.shape[1] < opts.seq_len:
        ended = (ids[:, -1] == EOT_TOKEN) | (ids[:, -1] == PAD_TOKEN)
        if ended.all():
            break
        live = ~ended
        nxt = torch.full((ids.shape[0],), PAD_TOKEN, dtype=torch.long, device=device)
        if ids.shape[1] + 1 == opts.seq_len:
            nxt[live] = EOT_TOKEN
        else:
            logits = backbone.next_token_logits(visual[live], ids[live]).float()
            logits = warp_logits(process_logits(logits, ids[live], opts), opts)
            nxt[live] = torch.multinomial(F.softmax(logits / opts.temperature, dim=-1), 1, generator=generator)[:, 0]
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids


@torch.no_grad()
def beam_search(backbone: CoCaBackbone, visual: torch.Tensor, opts: Decoding) -> list[list[int]]:
    """Beam search of width G = num_beams / num_beam_groups: visual [B, Q-1, E] -> per video the
    best hypothesis, SOT first (EOT not included)."""
    b, g, device = visual.shape[0], opts.num_beams // opts.num_beam_groups, visual.device
    vis = visual.repeat_interleave(g, dim=0)  # [B*G, Q-1, E], beam-minor
    ids = torch.full((b * g, 1), SOT_TOKEN, dtype=torch.long, device=device)
    score = torch.full((b, g), -1e9, device=device)
    score[:, 0] = 0.0  # the G beams start as one prefix
    # finished hypotheses: the G best per video, (sum of logits / length, token ids padded to seq_len)
    hyp_score = torch.full((b, g), float("-inf"), device=device)
    hyp_ids = torch.zeros(b, g, opts.seq_len, dtype=torch.long, device=device)
    hyp_len = torch.zeros(b, g, dtype=torch.long, device=device)  # tokens of each hypothesis, SOT included
    hyp_count = torch.zeros(b, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)[:, None]
    while True:
        length = ids.shape[1]
        logits = process_logits(backbone.next_token_logits(vis, ids).float(), ids, opts)
        vocab = logits.shape[-1]
        top, index = (logits + score.view(-1, 1)).view(b, g * vocab).topk(2 * g, dim=1)  # [B, 2G], best first
        source, token = index // vocab, index % vocab
        is_eot = token == EOT_TOKEN
        # an EOT among the first G pairs closes its beam: hypothesis scored by the length with SOT and EOT
        closes = is_eot & (torch.arange(2 * g, device=device) < g) & ~done[:, None]
        new_score = torch.where(closes, top / (length + 1), float("-inf"))
        new_ids = F.pad(
            ids.view(b, g, length).gather(1, source[..., None].expand(-1, -1, length)), (0, opts.seq_len - length)
        )
        merged_score, keep = torch.cat([hyp_score, new_score], 1).sort(dim=1, descending=True, stable=True)
        hyp_score, keep = merged_score[:, :g], keep[:, :g]
        hyp_ids = torch.cat([hyp_ids, new_ids], 1)[rows, keep]
        hyp_len = F.pad(hyp_len, (0, 2 * g), value=length).gather(1, keep)
        hyp_count = (hyp_count + closes.sum(1)).clamp(max=g)
        # the first G other pairs continue
        pick = (is_eot.long() * 2 * g + torch.arange(2 * g, device=device)).argsort(dim=1)[
            :, :g
        ]  # non-EOT first, by rank
        beam_source = source.gather(1, pick)
        beam_token = token.gather(1, pick)
        best_attainable = top[:, 0] / (length + 1)
        done = done | ((hyp_count >= g) & (hyp_score[:, -1] >= best_attainable))
        score = torch.where(done[:, None], score, top.gather(1, pick))
        prefix = ids.view(b, g, length).gather(1, beam_source[..., None].expand(-1, -1, length))
        ids = torch.cat([prefix, beam_token[..., None]], dim=-1).view(b * g, length + 1)
        if done.all() or ids.shape[1] >= opts.seq_len:
            break
    # videos still open: their beams join the hypotheses, scored by their length (SOT included, no EOT)
    length = ids.shape[1]
    open_score = torch.where(done[:, None], float("-inf"), score / length)
    open_ids = F.pad(ids.view(b, g, length), (0, opts.seq_len - length))
    best = torch.cat([hyp_score, open_score], 1).argmax(dim=1)  # [B]
    chosen = torch.cat([hyp_ids, open_ids], 1)[torch.arange(b, device=device), best]
    lengths = F.pad(hyp_len, (0, g), value=length).gather(1, best[:, None])[:, 0]
    return [seq[:n] for seq, n in zip(chosen.tolist(), lengths.tolist(), strict=True)]


@torch.no_grad()
def generate(backbone: CoCaBackbone, visual: torch.Tensor, opts: Optional[Decoding] = None) -> list[list[int]]:
    """visual [B, Q-1, E] -> per video the caption's token ids (after SOT, before EOT)."""
    opts = opts or Decoding()
    opts.check(backbone.clip.text_decoder.context_length)
    if opts.generation == "beam_search":
        sequences = beam_search(backbone, visual, opts)
    else:
        sequences = sample(backbone, visual, opts).tolist()
    out = []
    for seq in sequences:
        seq = seq[1:]
        ends = [i for i, t in enumerate(seq) if t == EOT_TOKEN or (t == PAD_TOKEN and opts.generation != "beam_search")]
        out.append(seq[: ends[0]] if ends else seq)
    return out


@torch.no_grad()
def caption(model, frames: torch.Tensor, frame_mask: torch.Tensor, opts: Optional[Decoding] = None) -> list[str]:
    """frames [B, T, 3, H, W], frame_mask [B, T] bool -> one caption per video."""
    encoder = video_encoder(model)
    visual = visual_tokens(encoder, frames, frame_mask)
    return [encoder.tokenizer.decode(seq) for seq in generate(encoder.backbone, visual, opts)]


def can_caption(model) -> bool:
    """Whether a loaded model has a caption decoder (a CoCa backbone)."""
    return isinstance(video_encoder(model).backbone, CoCaBackbone)


def caption_file(
    model,
    cfg,
    path,
    start: Optional[float] = None,
    end: Optional[float] = None,
    frames: Optional[int] = None,
    opts: Optional[Decoding] = None,
) -> str:
    """Caption the window [start, end] seconds (default: all) of a video file, its frames sampled and
    transformed as evaluation does (``cfg``: the checkpoint's ExperimentConfig, None for a converted
    file). ``VideoError`` for a file that cannot be decoded."""
    from mugstan.config import DataConfig
    from mugstan.data.datasets import Clip, ClipReader

    encoder = video_encoder(model)
    device = encoder.logit_scale.log_scale.device
    data = cfg.data if cfg else DataConfig(image_size=encoder.backbone.image_size)
    reader = ClipReader(dataclasses.replace(data, test_clips=1, test_crops=1), train=False, num_frames=frames)
    frames, mask = reader.read(
        Clip(str(Path(path).expanduser()), start, end), 0
    )  # [T, 3, S, S], [T] (False: fps padding)
    return caption(model, frames.unsqueeze(0).to(device), mask.unsqueeze(0).to(device), opts)[0]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    d = Decoding()
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint of a model with a CoCa backbone (folder, .safetensors or hf-hub:org/name)",
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="frames per video (default: the checkpoint's test frames)"
    )
    parser.add_argument(
        "--device",
        type=device_arg,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the model runs: cpu, cuda, cuda:1, ... (default here: %(default)s; cuda wherever there is one)",
    )
    opts = parser.add_argument_group("decoding (open_clip's CoCa.generate options and defaults)")
    opts.add_argument(
        "--generation",
        default=d.generation,
        choices=GENERATIONS,
        help=f"default {d.generation}; top_k with --top-k 1 is greedy",
    )
    opts.add_argument(
        "--seq-len",
        type=int,
        default=d.seq_len,
        help=f"longest output in tokens, start and end tokens included (default {d.seq_len})",
    )
    opts.add_argument(
        "--min-seq-len",
        type=int,
        default=d.min_seq_len,
        help=f"no end token before this length, start token included (default {d.min_seq_len})",
    )
    opts.add_argument("--num-beams", type=int, default=d.num_beams, help=f"beam search: beams (default {d.num_beams})")
    opts.add_argument(
        "--num-beam-groups",
        type=int,
        default=d.num_beam_groups,
        help=f"beam search: groups (default {d.num_beam_groups}; identical copies: the width is beams / groups)",
    )
    opts.add_argument("--top-k", type=int, default=d.top_k, help=f"top_k sampling: tokens kept (default {d.top_k})")
    opts.add_argument(
        "--top-p", type=float, default=d.top_p, help=f"top_p sampling: probability kept (default {d.top_p})"
    )
    opts.add_argument(
        "--temperature", type=float, default=d.temperature, help=f"sampling temperature (default {d.temperature})"
    )
    opts.add_argument(
        "--repetition-penalty", type=float, default=d.repetition_penalty, help=f"default {d.repetition_penalty} (none)"
    )
    opts.add_argument("--seed", type=int, default=d.seed, help=f"seed of the sampling draws (default {d.seed})")


def main(args: argparse.Namespace) -> int:
    """Every video is opened and the options are checked before the model loads; a bad one stops the
    command with one ``error:`` line (exit 2), as does a checkpoint without a caption decoder."""
    from mugstan.data.video import probe
    from mugstan.engine.checkpoint import load_model

    opts = Decoding(
        args.generation,
        args.seq_len,
        args.min_seq_len,
        args.num_beams,
        args.num_beam_groups,
        args.top_k,
        args.top_p,
        args.temperature,
        args.repetition_penalty,
        args.seed,
    )
    opts.check()
    for path in args.videos:
        probe(Path(path).expanduser())
    model, cfg = load_model(args.checkpoint, torch.device(args.device))
    if not can_caption(model):
        raise MismatchError(
            f"{args.checkpoint} has a {type(video_encoder(model).backbone).__name__}, which has no caption "
            "decoder; captions need a model with a CoCa backbone (model.backbone: coca_ViT-B-32, coca_ViT-L-14)"
        )
    opts.check(video_encoder(model).backbone.clip.text_decoder.context_length)
    for path in args.videos:
        print(f"{path}\t{caption_file(model, cfg, path, frames=args.frames, opts=opts)}", flush=True)
    return 0

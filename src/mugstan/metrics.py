"""Retrieval and recognition metrics (methods.md §6).

Ranks are 0-based and ties count against the model: the rank of the truth is the number of
other candidates scoring at least as high. (CLIP4Clip's evaluation breaks ties in the model's
favour; with ours a model that scores everything equally ranks every truth last, as it should.)

- 1:1 retrieval (MSR-VTT 1k-A, LSMDC, DiDeMo, ActivityNet paragraphs): truth on the diagonal.
- Multi-caption (MSVD, VATEX, MSR-VTT full): text-to-video ranks each caption among all
  videos. Video-to-text, two labelled conventions: "lenient" ranks the video's best caption
  against the best caption of every other video (V groups; what CLIP4Clip-derived code reports),
  "strict" ranks it among all captions (a hit at K if any own caption is in the top K).
- DSL (dual softmax, test time only, labelled): S' = S * softmax(S over the query axis).
- Recognition: top-1 / top-5 of softmax probabilities averaged over views.
"""

from __future__ import annotations

from typing import Sequence

import torch


def summarize(ranks: torch.Tensor) -> dict[str, float]:
    """0-based ranks [Q] -> R@1/5/10 (percent), MdR and MnR (1-based)."""
    ranks = ranks.float()
    out = {f"R@{k}": 100.0 * (ranks < k).float().mean().item() for k in (1, 5, 10)}
    out["MdR"] = ranks.quantile(0.5).item() + 1  # the midpoint for an even count, as numpy.median
    out["MnR"] = ranks.mean().item() + 1
    return out


def ranks_of_truth(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """scores [Q, C], truth [Q] candidate index -> 0-based ranks [Q] (ties against the model)."""
    target = scores.gather(1, truth[:, None])
    return (scores >= target).sum(1) - 1


def dual_softmax(scores: torch.Tensor) -> torch.Tensor:
    """DSL re-ranking of query x candidate scores [Q, C]: S * softmax(S over the query axis)."""
    return scores * torch.softmax(scores.float(), dim=0)


def retrieval_metrics(scores: torch.Tensor, caption_video: Sequence[int], dsl: bool = False) -> dict[str, dict[str, float]]:
    """Text x video scores [N_text, N_video] (already scaled) and each caption's video index.

    Returns {"t2v": ..., "v2t": ...} for 1:1 sets, and for multi-caption sets
    {"t2v": ..., "v2t_lenient": ..., "v2t_strict": ...}; with ``dsl`` the keys end in "_dsl".
    """
    scores = scores.float()
    link = torch.as_tensor(list(caption_video), dtype=torch.long)
    n_text, n_video = scores.shape
    if len(link) != n_text:
        raise ValueError(f"{len(link)} caption links for {n_text} texts")
    suffix = "_dsl" if dsl else ""
    t2v_scores = dual_softmax(scores) if dsl else scores
    out = {f"t2v{suffix}": summarize(ranks_of_truth(t2v_scores, link))}
    v2t_scores = (dual_softmax(scores.t()) if dsl else scores.t())  # [N_video, N_text]
    if n_text == n_video and torch.equal(link, torch.arange(n_video)):
        out[f"v2t{suffix}"] = summarize(ranks_of_truth(v2t_scores, torch.arange(n_video)))
        return out
    own = link[None, :] == torch.arange(n_video)[:, None]  # [V, N_text]: caption c is video v's
    if not own.any(1).all():
        raise ValueError("every video needs at least one caption for video-to-text retrieval")
    # lenient: each caption group is represented by its best caption
    groups = torch.full((n_video, n_video), float("-inf"))
    groups.scatter_reduce_(1, link[None, :].expand(n_video, -1), v2t_scores, reduce="amax")
    out[f"v2t_lenient{suffix}"] = summarize(ranks_of_truth(groups, torch.arange(n_video)))
    # strict: the best own caption among all captions of other videos
    best_own = v2t_scores.masked_fill(~own, float("-inf")).amax(1, keepdim=True)
    strict_ranks = ((v2t_scores >= best_own) & ~own).sum(1)
    out[f"v2t_strict{suffix}"] = summarize(strict_ranks)
    return out


def recognition_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits [N, C] or [N, V, C] (views), labels [N] -> top-1 / top-5 accuracy (percent).

    With views, per-view softmax probabilities are averaged before ranking.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    if probs.dim() == 3:
        probs = probs.mean(1)
    labels = labels.long()
    truth = probs.gather(1, labels[:, None])
    rank = (probs >= truth).sum(1) - 1  # ties against the model
    return {"top1": 100.0 * (rank < 1).float().mean().item(), "top5": 100.0 * (rank < 5).float().mean().item()}

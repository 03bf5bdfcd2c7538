"""AdamW with CLIP / new-module parameter groups, and per-step warmup + cosine decay."""

from __future__ import annotations

import math

import torch

from mugstan.config import TrainConfig


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """New modules (branch, head, classifier) at ``new_module_lr_mult`` x the CLIP learning rate; no
    weight decay on norms, biases, embeddings and the logit scale (``param_groups``)."""
    groups = []
    for g in param_groups(model):
        groups.append({
            "params": g["params"], "name": g["name"],
            "lr": cfg.lr * (cfg.new_module_lr_mult if g["new"] else 1.0),
            "weight_decay": cfg.weight_decay if g["decay"] else 0.0,
        })
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    return torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps)


def param_groups(model: torch.nn.Module) -> list[dict]:
    """Trainable parameters split into pretrained CLIP vs new modules and decay vs no decay.

    A parameter is CLIP's when its name passes through a module called ``backbone``. Each group:
    {"name", "params", "new": bool, "decay": bool}. No weight decay on norms, biases, embeddings
    (class / positional / temporal / token) and the logit scale.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = "backbone" not in name.split(".")
        decay = p.dim() >= 2 and "embed" not in name and "logit_scale" not in name
        groups.setdefault((new, decay), []).append(p)
    return [
        {"name": f"{'new' if new else 'clip'}_{'decay' if decay else 'no_decay'}", "params": params, "new": new, "decay": decay}
        for (new, decay), params in sorted(groups.items())
    ]


def warmup_cosine(total_steps: int, warmup: float) -> "callable":
    """lr multiplier of step s: linear warmup over ``warmup`` steps (a fraction of the total when
    < 1), then cosine decay to 0 at ``total_steps``."""
    warm = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    warm = min(warm, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))

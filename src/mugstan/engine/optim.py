"""AdamW (or CLIP4Clip's BertAdam) with CLIP / new-module parameter groups, and the per-step
learning-rate schedules.

``train.schedule`` (every one a multiplier of the configured learning rates, per optimiser step):

- ``warmup_cosine``: linear warmup over ``train.warmup`` steps, then a cosine to 0 at the end.
- ``bert_warmup_cosine``: CLIP4Clip's BertAdam schedule, x = step / total: x / warmup while
  x < warmup, then 0.5 * (1 + cos(pi * x)) (not restarted at the end of warmup).
- ``linear_then_cosine``: the STAN authors' mmengine schedule (``LinearLR`` then
  ``CosineAnnealingLR``, ``convert_to_iter_based``), its epochs converted to steps.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from mugstan.config import ConfigError, OptimizerKind, Schedule, TrainConfig


class BertAdam(torch.optim.Optimizer):
    """The Adam of CLIP4Clip / CLIP2Video (``BertAdam`` of pytorch-pretrained-BERT), without its
    built-in schedule (the LambdaLR of ``train.schedule`` scales ``lr`` instead):

        g <- g * min(1, max_grad_norm / (|g| + 1e-6))      (each parameter on its own; <= 0: off)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2  (no bias correction)
        p <- p - lr * (m / (sqrt(v) + eps) + weight_decay * p)
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 max_grad_norm: float = 1.0):
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["max_grad_norm"] > 0:
                    coef = group["max_grad_norm"] / (float(g.norm()) + 1e-6)
                    if coef < 1.0:
                        g.mul_(coef)
                state = self.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """New modules (branch, head, classifier) at ``new_module_lr_mult`` x the CLIP learning rate; no
    weight decay on the kinds of ``train.no_decay`` (``train.no_decay_new`` in the new modules:
    ``param_groups``)."""
    groups = []
    for g in param_groups(model, cfg.no_decay, cfg.no_decay_new):
        groups.append(
            {
                "params": g["params"],
                "name": g["name"],
                "lr": cfg.lr * (cfg.new_module_lr_mult if g["new"] else 1.0),
                "weight_decay": cfg.weight_decay if g["decay"] else 0.0,
            }
        )
    if not groups:
        raise ConfigError(
            "the model has no trainable parameters: model.freeze_backbone / model.freeze_text leave nothing to train "
            "with this branch and head (model.branch=none, model.head=mean or meanP have no weights of their own)"
        )
    if cfg.optimizer == OptimizerKind.bertadam:
        return BertAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, max_grad_norm=cfg.grad_clip or -1.0)
    # On GPUs, foreach (one batched kernel per tensor list), as PyTorch runs AdamW there by default: the
    # authors' optimizer, bitwise. On a CPU the fused kernel makes one pass per tensor: 3.2x faster
    # than foreach on the demo's model, within 3e-8 of it after 5 steps, not bitwise
    # (benchmarks/optimizer_speed.py).
    # train.fused_adamw switches CUDA to the fused kernel too.
    on_cpu = all(p.device.type == "cpu" for g in groups for p in g["params"])
    kernel = {"fused": True} if on_cpu or cfg.fused_adamw else {"foreach": True}
    return torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps, **kernel)


NO_DECAY_KINDS = ("norm", "bias", "embedding", "logit_scale")


def parameter_kind(name: str, p: torch.Tensor) -> str:
    """ "logit_scale", "embedding" (class / positional / temporal / token embeddings: "embed" in
    the name), "bias" (other 1-D parameters named *.bias), "norm" (other 1-D or scalar
    parameters: LayerNorm weights) or "weight" (matrices and kernels)."""
    if "logit_scale" in name:
        return "logit_scale"
    if "embed" in name:
        return "embedding"
    if p.dim() >= 2:
        return "weight"
    return "bias" if name.endswith("bias") else "norm"


def param_groups(model: torch.nn.Module, no_decay=NO_DECAY_KINDS, no_decay_new=None) -> list[dict]:
    """Trainable parameters split into pretrained CLIP vs new modules and decay vs no decay.

    A parameter is CLIP's when its name passes through a module called ``backbone``. Each group:
    {"name", "params", "new": bool, "decay": bool}. No weight decay on the ``parameter_kind``s in
    ``no_decay`` (``train.no_decay``; default: norms, biases, embeddings and the logit scale; the
    STAN authors exempt norms and biases only, CLIP4Clip biases only), in the new modules on those
    in ``no_decay_new`` (``train.no_decay_new``; None: ``no_decay``). The STAN authors' mmengine
    grouping is ``no_decay=[norm, bias], no_decay_new=[]``: their ``custom_keys={'STAN': ...}``
    matches every branch parameter (``STAN_S_layers``, ``STAN_T_layers``, ``STAN_time_embed``) and
    mmengine then skips the norm and bias rules for it.
    """
    no_decay_new = no_decay if no_decay_new is None else no_decay_new
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = "backbone" not in name.split(".")
        decay = parameter_kind(name, p) not in (no_decay_new if new else no_decay)
        groups.setdefault((new, decay), []).append(p)
    return [
        {
            "name": f"{'new' if new else 'clip'}_{'decay' if decay else 'no_decay'}",
            "params": params,
            "new": new,
            "decay": decay,
        }
        for (new, decay), params in sorted(groups.items())
    ]


def authors_gradient_scale(model: torch.nn.Module, world: int) -> None:
    """``train.gather_grad_world`` = W: the gradients the authors' code stepped with (STAN's
    ``GatherLayer``, CLIP4Clip's ``AllGather``: the all_gather's backward keeps each process's
    rows only, and DDP averages over W GPUs). Every parameter that produces the gathered
    embeddings (backbone, branch, head) then gets 1/W of the full-batch gradient, which is what
    mugstan's gather and DDP give; a learned logit scale, applied after the gather on every process
    alike, keeps its full gradient. Call after the backward, before clipping."""
    if world <= 1:
        return
    for name, p in model.named_parameters():
        if p.grad is not None and "logit_scale" not in name:
            p.grad.div_(world)


def steps_of(value: float, total_steps: int) -> int:
    """A length in steps given as a fraction of the total (< 1) or as steps (>= 1): train.warmup,
    train.freeze_text_for."""
    return int(round(value * total_steps)) if value < 1 else int(value)


def warmup_cosine(total_steps: int, warmup: float) -> "callable":
    """lr multiplier of step s: linear warmup over ``warmup`` steps (a fraction of the total when
    < 1), then cosine decay to 0 at ``total_steps``."""
    warm = min(steps_of(warmup, total_steps), max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def bert_warmup_cosine(total_steps: int, warmup: float) -> Callable[[int], float]:
    """CLIP4Clip's ``BertAdam(schedule='warmup_cosine', warmup=w, t_total=total)``: with
    x = step / total (step from 0), x / w while x < w, then 0.5 * (1 + cos(pi * x))."""
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        x = step / total
        return x / warmup if x < warmup else 0.5 * (1.0 + math.cos(math.pi * x))

    return factor


def linear_then_cosine(
    steps_per_epoch: int,
    start_factor: float,
    warmup_epochs: float,
    t_max_epochs: float,
    cosine_begin: Optional[float] = None,
    cosine_end: Optional[float] = None,
) -> Callable[[int], float]:
    """mmengine's ``LinearLR(start_factor, begin=0, end=warmup_epochs)`` then
    ``CosineAnnealingLR(T_max=t_max_epochs, eta_min=0, begin=cosine_begin, end=cosine_end)``, both
    ``by_epoch`` and ``convert_to_iter_based`` (epochs x ``steps_per_epoch`` steps).

    Factor at step s: start + (1 - start) * s / W during warmup [0, W); 1 from W to the cosine's
    begin B; (1 + cos(pi * (s - B) / T)) / 2 from B to its end E (periodic past T, as mmengine's
    chained cosine is: it rises again after reaching 0); after E it holds its last value.
    """
    w = int(round(warmup_epochs * steps_per_epoch))
    b = w if cosine_begin is None else int(round(cosine_begin * steps_per_epoch))
    t = max(t_max_epochs * steps_per_epoch, 1e-9)
    e = None if cosine_end is None else int(round(cosine_end * steps_per_epoch))

    def factor(step: int) -> float:
        if step < w:
            return start_factor + (1.0 - start_factor) * step / w
        if step < b:
            return 1.0
        s = step if e is None else min(step, e - 1)
        return 0.5 * (1.0 + math.cos(math.pi * (s - b) / t))

    return factor


def schedule_factor(cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr multiplier per optimiser step of ``cfg.schedule``."""
    if cfg.schedule == Schedule.bert_warmup_cosine:
        return bert_warmup_cosine(total_steps, cfg.warmup if cfg.warmup < 1 else cfg.warmup / max(total_steps, 1))
    if cfg.schedule == Schedule.linear_then_cosine:
        return linear_then_cosine(
            steps_per_epoch, cfg.start_factor, cfg.warmup_epochs, cfg.cosine_t_max, cfg.cosine_begin, cfg.cosine_end
        )
    return warmup_cosine(total_steps, cfg.warmup)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup: float,
    cfg: Optional[TrainConfig] = None,
    steps_per_epoch: Optional[int] = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR: ``cfg.schedule`` when a config is given, else warmup + cosine over ``warmup``."""
    if cfg is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule_factor(cfg, total_steps, steps_per_epoch or max(total_steps, 1))
    )

"""The training loop: ``mugstan train CONFIG [key=value ...] [--resume]``, or ``train(cfg)`` in Python.

One process or ``torchrun --nproc_per_node N`` (DDP; NCCL on GPUs, gloo on CPUs). Per optimiser
step: ``accum_steps`` micro-batches, autocast forward (fp32 master weights), backward (DDP syncs
only on the last micro-batch), gradient clipping, AdamW step, warmup + cosine schedule, logit
scale clamp. With ``train.chunk_size`` each micro-batch is one contrastive batch processed by
gradient caching (``engine/gradcache.py``) in chunks of that many clips per process (under
torchrun without a DDP wrapper: the weights are broadcast once and the gradients averaged once per
step). Every ``save_every`` steps and at each epoch's end the loop state goes to
``output_dir/checkpoints/last`` (atomic), so ``--resume`` continues from the exact batch; after each
validation the best model (validation split, never test) is kept in ``checkpoints/best``. At the
end the best model is evaluated on the test split when the config names one.

Outputs in ``output_dir``: ``metrics.jsonl``, TensorBoard scalars (``tb/``), ``curves.png``,
``config.yaml``, ``checkpoints/{last,best}``, ``results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mugstan.config import ExperimentConfig, load_config, save_config, validate_config
from mugstan.data.datasets import build_dataset, collate, load_annotations
from mugstan.engine import checkpoint as ckpt
from mugstan.engine.distributed import TrainSampler, barrier, setup
from mugstan.engine.evaluate import autocast_for, evaluate, format_result, headline, resolve_precision
from mugstan.engine.gradcache import average_gradients, broadcast_parameters, gradcache_backward
from mugstan.engine.logging import MetricsLogger
from mugstan.engine.optim import build_optimizer, build_scheduler
from mugstan.models import build_model


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def forward_backward(model, batch: dict, device: torch.device, precision: str, scale: float, scaler) -> torch.Tensor:
    """One micro-batch: loss under autocast, backward of loss * scale. Returns the detached loss."""
    frames = batch["frames"].to(device, non_blocking=True)
    mask = batch["frame_mask"].to(device)
    with autocast_for(device, precision):
        if "label" in batch:
            inner = model.module if hasattr(model, "module") else model
            loss = inner.loss(model(frames, mask), batch["label"].to(device))
        else:
            loss = model(frames, mask, batch["ids"].to(device), batch["text_mask"].to(device))
    scaled = loss * scale
    (scaler.scale(scaled) if scaler else scaled).backward()
    return loss.detach()


def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, validate, keep the best checkpoint, test it. Returns the final results dict."""
    validate_config(cfg, check_files=False)  # configs built in Python, not only load_config's
    dist = setup()
    t = cfg.train
    seed_everything(t.seed + dist.rank, t.deterministic)
    out = Path(t.output_dir)
    state_path = out / "checkpoints" / "last" / "state.pt"
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {state_path}")

    # data first: a missing file fails before the model is built
    ann = load_annotations(cfg.data, "train")
    if cfg.model.task == "recognition" and not cfg.model.class_names and ann.class_names:
        cfg.model.class_names = list(ann.class_names)
    model = build_model(cfg.model).to(dist.device)
    dataset = build_dataset(cfg.data, "train", getattr(model, "tokenizer", None), train=True,
                            pairs=cfg.model.task == "retrieval", seed=t.seed, ann=ann)
    sampler = TrainSampler(len(dataset), t.batch_size, dist.world, dist.rank, t.accum_steps, t.seed)
    local_batch = t.batch_size // (dist.world * t.accum_steps)  # clips of one micro-batch on this process
    gradcache = t.chunk_size is not None and t.chunk_size < local_batch
    if t.chunk_size is not None and not gradcache and dist.main:
        print(f"train.chunk_size={t.chunk_size} >= the {local_batch} clips per process and micro-batch: "
              "they are trained at once, without gradient caching (it would only add a forward pass)")
    total_steps = t.epochs * sampler.steps_per_epoch if t.max_steps is None else min(t.max_steps, t.epochs * sampler.steps_per_epoch)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, total_steps, t.warmup)
    precision = resolve_precision(t.precision, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type) if precision == "fp16" else None
    ddp = model
    if dist.world > 1 and gradcache:  # no DDP wrapper: start from rank 0's weights, average gradients per step
        broadcast_parameters(model)
    elif dist.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                                                        find_unused_parameters=False)

    step, epoch, skip, best = 0, 0, 0, None
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(state_path.parent / "model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, skip, best = state["step"], state["epoch"], state["step_in_epoch"], state.get("best")
        ckpt.set_rng_state(state["rng"][dist.rank] if isinstance(state["rng"], list) else state["rng"])
    logger = MetricsLogger(out, enabled=dist.main, resume=resume)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"training {cfg.name}: {len(dataset)} items, {sampler.steps_per_epoch} steps/epoch x {t.epochs} epochs "
              f"({total_steps} steps), global batch {t.batch_size} on {dist.world} process(es), {n_train / 1e6:.1f} M trainable parameters, "
              f"{precision} on {dist.device.type}")

    def save_last(step_in_epoch: int) -> None:
        rng = ckpt.rng_state()
        from mugstan.engine.distributed import all_gather_objects

        rngs = all_gather_objects(rng)
        if dist.main:
            ckpt.save_checkpoint(out / "checkpoints" / "last", model, cfg, {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "step": step, "epoch": epoch,
                "step_in_epoch": step_in_epoch, "best": best, "rng": rngs,
            })
        barrier()

    has_val = bool(cfg.data.val_ann)
    skipped_total = 0
    while step < total_steps and epoch < t.epochs:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, skip)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate,
                            pin_memory=dist.device.type == "cuda",
                            generator=torch.Generator().manual_seed(t.seed + epoch))  # not the global RNG: resumes stay exact
        model.train()
        step_in_epoch = skip
        bar = tqdm(total=sampler.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{t.epochs}", unit="step",
                   disable=not (progress and dist.main), dynamic_ncols=True)
        tick, clips = time.time(), 0
        micro_losses = []
        for micro, batch in enumerate(loader):
            if batch["failed"]:
                skipped_total += len(batch["failed"])
                for index, error in batch["failed"]:
                    logger.event("skipped_video", step=step, index=index, error=error)
            last_micro = (micro + 1) % t.accum_steps == 0
            if gradcache:
                micro_losses.append(gradcache_backward(model, batch, t.chunk_size, dist.device,
                                                       lambda: autocast_for(dist.device, precision), 1.0 / t.accum_steps, scaler))
            else:
                sync = contextlib.nullcontext() if (last_micro or dist.world == 1) else ddp.no_sync()
                with sync:
                    micro_losses.append(forward_backward(ddp, batch, dist.device, precision, 1.0 / t.accum_steps, scaler))
            clips += batch["frames"].shape[0]
            if not last_micro:
                continue
            if gradcache:
                average_gradients(model)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf"))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            model.clamp_logit_scale()
            step += 1
            step_in_epoch += 1
            loss = torch.stack(micro_losses).mean().item()
            micro_losses = []
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                elapsed = time.time() - tick
                rate = clips * dist.world / max(elapsed, 1e-9)
                logger.scalars(step, {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                                      "train/clips_per_s": rate, "train/logit_scale": model.logit_scale().item(), "train/skipped_videos": skipped_total})
                bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{rate:.1f}")
                tick, clips = time.time(), 0
            if t.save_every and step % t.save_every == 0 and step_in_epoch < sampler.steps_per_epoch:
                save_last(step_in_epoch)
            if step >= total_steps:
                break
        bar.close()
        epoch_done = step_in_epoch >= sampler.steps_per_epoch
        if epoch_done:
            epoch, skip = epoch + 1, 0
        if has_val and (epoch % t.eval_every == 0 or step >= total_steps):
            result = evaluate(model, cfg, "val", dist, progress)
            name, value = headline(result)
            logger.scalars(step, {f"val/{name}": value})
            logger.event("validation", step=step, epoch=epoch, result=result)
            if dist.main:
                print(format_result(result))
            if best is None or value > best["value"]:
                best = {"value": value, "metric": name, "step": step, "epoch": epoch}
                if dist.main:
                    ckpt.save_checkpoint(out / "checkpoints" / "best", model, cfg)
                barrier()
        save_last(0 if epoch_done else step_in_epoch)
        logger.plot()

    if best is None:  # no validation split: the final model is the one to keep
        if dist.main:
            ckpt.save_checkpoint(out / "checkpoints" / "best", model, cfg)
        barrier()
        best = {"metric": None, "step": step, "epoch": epoch}
    results = {"name": cfg.name, "steps": step, "best": best, "skipped_videos": skipped_total}
    if cfg.data.test_ann:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out / "checkpoints" / "best" / "model.safetensors")))
        test = evaluate(model, cfg, "test", dist, progress)
        results["test"] = test
        if dist.main:
            print("best checkpoint on the test split:\n" + format_result(test))
    if dist.main:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    logger.close()
    return results


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-6 data.root=/videos")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/last")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume, progress=not args.no_progress)
    return 0

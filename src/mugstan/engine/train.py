"""The training loop: ``mugstan train CONFIG [key=value ...] [--resume]``, or ``train(cfg)`` in Python.

One process or ``torchrun --nproc_per_node N`` (DDP; NCCL on GPUs, gloo on CPUs). Every model is
trained the same way:

    outputs = model(**model_inputs(model, batch, device))      # dict of outputs
    loss = loss_fn(outputs, batch)                             # mugstan.losses.build_loss

Per optimiser step: ``accum_steps`` micro-batches, autocast forward (fp32 master weights),
backward (DDP syncs only on the last micro-batch), gradient clipping, AdamW step, warmup + cosine
schedule, logit scale clamp. With ``train.chunk_size`` each micro-batch is one contrastive batch
processed by gradient caching (``engine/gradcache.py``) in chunks of that many clips per process
(under torchrun without a DDP wrapper: the weights are broadcast once and the gradients averaged
once per step). Every ``save_every`` steps and at each epoch's end the loop state goes to
``output_dir/checkpoints/last`` (atomic), so ``--resume`` continues from the exact batch; after each
validation the best model (validation split; the test split only with ``eval.select_on: test``, the
authors' protocol, labelled in ``results.json``; a data.val_ann that is the test file picks nothing:
the last model is kept, and results.json says so) is kept in ``checkpoints/best``. At the
end the best model is evaluated on the test split when the config names one.

Outputs in ``output_dir``: ``metrics.jsonl``, TensorBoard scalars (``tb/``), ``curves.png``,
``config.yaml``, ``checkpoints/{last,best}``, ``results.json``.

What the run reports as it goes (its size, model.init_from, each validation, the test result,
where it saved) goes to this module's logger on the main process: ``mugstan train`` shows it;
from Python, ``logging.basicConfig(level=logging.INFO)`` does (nothing is printed otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mugstan.config import ConfigError, ExperimentConfig, SelectOn, Task, load_config, save_config, validate_config
from mugstan.data.datasets import build_train_dataset, collate, load_annotations
from mugstan.engine import checkpoint as ckpt
from mugstan.engine.compile import compile_model, resolve_compile
from mugstan.engine.distributed import DistInfo, TrainSampler, all_gather_objects, barrier, device_settings, setup
from mugstan.engine.evaluate import evaluate, format_result, headline
from mugstan.engine.gradcache import average_gradients, broadcast_parameters, gradcache_backward
from mugstan.engine.logging import MetricsLogger
from mugstan.engine.optim import authors_gradient_scale, build_optimizer, build_scheduler, steps_of
from mugstan.engine.precision import autocast_for, linear_width, resolve_precision
from mugstan.files import recover_folder
from mugstan.losses import build_loss
from mugstan.models import build_model, model_inputs

logger = logging.getLogger(__name__)

def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Run:
    """Everything one training run holds, built by ``setup_run``."""

    cfg: ExperimentConfig
    dist: DistInfo
    out: Path
    model: torch.nn.Module  # the model itself
    wrapped: torch.nn.Module  # what the forward pass goes through: DDP(model) or the model
    loss_fn: Callable[[dict, dict], torch.Tensor]
    dataset: object
    sampler: object  # TrainSampler over the dataset's items, or the ShardStream itself (data.dataset: webdataset)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Optional[torch.amp.GradScaler]
    precision: str
    gradcache: bool
    total_steps: int
    text_frozen_steps: int  # train.freeze_text_for in steps: the text tower's gradients are dropped before these

    def autocast(self):
        return autocast_for(self.dist.device, self.precision)


def setup_run(cfg: ExperimentConfig) -> Run:
    """Data first (a missing file fails before the model is built), then model, loss, optimiser."""
    dist = setup()
    t = cfg.train
    seed_everything(t.seed + dist.rank, t.deterministic)
    if dist.device.type == "cpu":
        # Denormal floats (below ~1e-38) flushed to zero: the AdamW moments and gradients of rarely
        # used token embeddings decay into them, and x86 CPUs compute them many times slower. The
        # demo's steps ran 1.47x faster with the same losses (benchmarks/results/synthetic_demo.md).
        torch.set_flush_denormal(True)
    streaming = cfg.data.dataset == "webdataset"  # tar shards, streamed (mugstan.data.datasets.shards)
    ann = None if streaming else load_annotations(cfg.data, "train")
    if not streaming:
        check_videos_exist(ann, cfg)
    names = _shard_class_names(cfg) if streaming else ann.class_names
    if cfg.model.task in (Task.recognition, Task.detection) and not cfg.model.class_names and names:
        cfg.model.class_names = list(names)
    model = build_model(cfg.model)
    if dist.main and not (cfg.model.pretrained or cfg.model.weights or cfg.model.init_from):
        logger.info(
            f"model.backbone {cfg.model.backbone or 'from model.backbone_config'} starts from random weights "
            "(model.pretrained, model.weights and model.init_from are null)"
        )
    if cfg.model.init_from:
        report = ckpt.init_from(model, cfg.model.init_from)
        if dist.main:
            logger.info(
                f"model.init_from: {report['loaded']} tensors from {cfg.model.init_from}; kept at initialisation: "
                f"{_names(report['new'])}; not used: {_names(report['unused'])}"
            )
    model = model.to(dist.device)
    # chat, detection: eager
    if resolve_compile(t.compile, dist.device) and cfg.model.task in (Task.retrieval, Task.recognition):
        compile_model(model)
    text_items = cfg.model.task in (
        Task.retrieval,
        Task.chat,
    )  # captions / conversations, tokenised by the model's tokenizer
    tokenizer = model.tokenizer if text_items else None
    # on a GPU the workers hand over uint8 clips and normalisation runs there (models.model_inputs):
    # measured 1.2x the loader's clips/s at 16 workers (benchmarks/results/loader_speed.md)
    if streaming:
        from mugstan.data.datasets.shards import ShardStream

        dataset = sampler = ShardStream(
            cfg.data,
            tokenizer,
            cfg.model.task == Task.recognition,
            t.seed,
            t.batch_size,
            dist.world,
            dist.rank,
            t.accum_steps,
            uint8=device_settings(dist.device).uint8_clips,
        )
    else:
        dataset = build_train_dataset(
            cfg.data, tokenizer, pairs=text_items, seed=t.seed, ann=ann, uint8=device_settings(dist.device).uint8_clips
        )
        check_one_batch(cfg, ann, len(dataset), dist.world)
        sampler = TrainSampler(len(dataset), t.batch_size, dist.world, dist.rank, t.accum_steps, t.seed)
    local_batch = t.batch_size // (dist.world * t.accum_steps)  # clips of one micro-batch on this process
    gradcache = t.chunk_size is not None and t.chunk_size < local_batch
    if t.chunk_size is not None and not gradcache and dist.main:
        logger.info(
            f"train.chunk_size={t.chunk_size} >= the {local_batch} clips per process and micro-batch: "
            "they are trained at once, without gradient caching (it would only add a forward pass)"
        )
    total_steps = (
        t.epochs * sampler.steps_per_epoch
        if t.max_steps is None
        else min(t.max_steps, t.epochs * sampler.steps_per_epoch)
    )
    optimizer = build_optimizer(model, t)
    precision = resolve_precision(t.precision, dist.device, width=linear_width(model))
    wrapped = model
    if dist.world > 1 and gradcache:  # no DDP wrapper: start from rank 0's weights, average gradients per step
        broadcast_parameters(model)
    elif dist.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=device_settings(dist.device).ddp_device_ids
        )
    return Run(
        cfg,
        dist,
        Path(t.output_dir),
        model,
        wrapped,
        build_loss(cfg.model, model),
        dataset,
        sampler,
        optimizer,
        build_scheduler(optimizer, total_steps, t.warmup, t, sampler.steps_per_epoch),
        torch.amp.GradScaler(dist.device.type) if precision == "fp16" else None,
        precision,
        gradcache,
        total_steps,
        steps_of(t.freeze_text_for, total_steps),
    )


def _shard_class_names(cfg: ExperimentConfig) -> Optional[list[str]]:
    """Class names of a recognition run on shards: data.extra.class_names (one per line), if given."""
    path = cfg.data.extra.get("class_names")
    return [n for n in Path(path).read_text().splitlines() if n.strip()] if path else None


def make_loader(run: Run, epoch: int, pos: dict):
    """This epoch's micro-batches, from ``pos["step_in_epoch"]`` on (shards: from each reader's position
    ``pos["stream"]``)."""
    cfg, dist = run.cfg, run.dist
    pin = (
        device_settings(dist.device).pin_memory and cfg.data.decode_device == "cpu"
    )  # frames decoded on the GPU are there already
    if cfg.data.dataset == "webdataset":
        run.sampler.consumed = dict(pos["stream"])
        return run.sampler.loader(cfg.data.loader_workers, pin)
    return DataLoader(
        run.dataset,
        batch_sampler=run.sampler,
        num_workers=cfg.data.loader_workers,
        collate_fn=collate,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(cfg.train.seed + epoch),
    )  # not the global RNG: resumes stay exact


def check_videos_exist(ann, cfg: ExperimentConfig, sample: int = 64) -> None:
    """Up to ``sample`` of the training videos, spread over the list: when none of them exists, a
    ``ConfigError`` naming the first and the folders (a wrong data.root), before the model is built."""
    step = max(1, len(ann.clips) // sample)
    checked = ann.clips[::step][:sample]
    if checked and not any(Path(c.path).is_file() for c in checked):
        raise ConfigError(
            f"none of the {len(checked)} training videos checked (of {len(ann.clips)}) exists, e.g. {checked[0].path}: "
            f"check data.root={cfg.data.root!r} and data.videos={cfg.data.videos!r} "
            "(`mugstan data check` lists every missing video)"
        )


def check_one_batch(cfg: ExperimentConfig, ann, items: int, world: int) -> None:
    """A training set of fewer ``items`` than one global batch: a ``ConfigError`` saying how many
    items there are, how many of the annotations' videos were left out or are missing and why, and
    the batch size that fits."""
    t = cfg.train
    if items >= t.batch_size:
        return
    kind = {Task.retrieval: "caption-video pairs", Task.chat: "conversations"}.get(cfg.model.task, "videos")
    clips = ann.clips
    why = []
    if cfg.model.task == Task.retrieval and len(set(ann.caption_clip)) < len(clips):
        why.append(
            f"{len(clips) - len(set(ann.caption_clip))} of its {len(clips)} videos have no caption and are left out"
        )
    missing = [c.path for c in clips if not Path(c.path).is_file()]
    if missing:
        why.append(
            f"{len(missing)} of its {len(clips)} video files {'is' if len(missing) == 1 else 'are'} missing and would "
            f"be skipped (first: {missing[0]}; "
            "check data.root and data.videos; `mugstan data check` lists them)"
        )
    step = world * t.accum_steps  # the batch is split over processes and accumulation steps
    fits = items // step * step
    fix = (
        f"set train.batch_size={fits} or less, or add data"
        if fits >= 1 and len(missing) < len(clips)
        else "fix the annotations or the video folder"
    )
    raise ConfigError(
        f"the training set has {items} {kind}, fewer than one batch of train.batch_size={t.batch_size}"
        f"{': ' + '; '.join(why) if why else ''} (data.train_ann: {cfg.data.train_ann}): {fix}"
    )


def _names(names: list[str], most: int = 6) -> str:
    return (
        "none"
        if not names
        else ", ".join(names[:most]) + (f" (+{len(names) - most} more)" if len(names) > most else "")
    )


def backward_micro_batch(run: Run, batch: dict, last_micro: bool) -> torch.Tensor:
    """Loss of one micro-batch and its backward (scaled by 1 / accum_steps). Returns the detached loss."""
    scale = 1.0 / run.cfg.train.accum_steps
    if run.gradcache:
        return gradcache_backward(
            run.model, run.loss_fn, batch, run.cfg.train.chunk_size, run.dist.device, run.autocast, scale, run.scaler
        )
    sync = contextlib.nullcontext() if (last_micro or run.dist.world == 1) else run.wrapped.no_sync()
    with sync:
        with run.autocast():
            loss = run.loss_fn(run.wrapped(**model_inputs(run.wrapped, batch, run.dist.device)), batch)
        scaled = loss * scale
        (run.scaler.scale(scaled) if run.scaler else scaled).backward()
    return loss.detach()


def optimizer_step(run: Run, step: int) -> float:
    """Average (gradient caching under torchrun), the authors' gradient scale (``train.gather_grad_world``),
    clip, step, schedule, clamp. Returns the gradient norm (of the scaled gradient).

    Before ``run.text_frozen_steps`` the text tower's gradients are dropped (set to None, after any
    averaging, so every process agrees): AdamW then neither moves nor decays those weights.
    """
    if run.gradcache:
        average_gradients(run.model)
    if step < run.text_frozen_steps:
        for p in run.model.backbone.text_parameters():
            p.grad = None
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    authors_gradient_scale(run.model, run.cfg.train.gather_grad_world)  # 1: mugstan's full gradient, unchanged
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip or float("inf"))
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if hasattr(run.model, "clamp_logit_scale"):  # contrastive models; the chat model has no logit scale
        run.model.clamp_logit_scale()
    return float(grad_norm)


def save_last(run: Run, position: dict) -> None:
    """checkpoints/last with the loop position and every process's RNG state, skipped-video count and
    stream positions (shards)."""
    rngs = all_gather_objects(ckpt.rng_state())
    skipped = all_gather_objects(position["skipped"])
    stream = all_gather_objects(position["stream"])
    if run.dist.main:
        ckpt.save_checkpoint(
            run.out / "checkpoints" / "last",
            run.model,
            run.cfg,
            {
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler else None,
                "rng": rngs,
                **position,
                "skipped": skipped,
                "stream": stream,
            },
        )
    barrier()


def save_best(run: Run) -> None:
    if run.dist.main:
        ckpt.save_checkpoint(run.out / "checkpoints" / "best", run.model, run.cfg)
    barrier()


def val_is_test(cfg: ExperimentConfig) -> bool:
    """data.val_ann names the file data.test_ann names (Kinetics-400 and SSv2 report on their
    validation files): choosing on it would be choosing on the reported split."""
    d = cfg.data
    return bool(d.val_ann and d.test_ann) and os.path.realpath(d.resolve(d.val_ann)) == os.path.realpath(
        d.resolve(d.test_ann)
    )


def selection_split(cfg: ExperimentConfig) -> Optional[str]:
    """The split that picks checkpoints/best: "val" (data.val_ann or data.val_shards), "test" with eval.select_on=test
    (the authors' protocol), or None (no validation split, or one that is the test file: the last
    model is kept)."""
    if cfg.eval.select_on == SelectOn.test:
        return "test"
    return "val" if (cfg.data.val_ann and not val_is_test(cfg)) or cfg.data.val_shards else None


def validate(run: Run, pos: dict, metrics: MetricsLogger, progress: bool) -> None:
    """Evaluate on the selection split; keep checkpoints/best when the headline metric improves."""
    split = selection_split(run.cfg)
    result = evaluate(run.model, run.cfg, split, run.dist, progress)
    name, value = headline(result)
    metrics.scalars(pos["step"], {f"{split}/{name}": value})
    metrics.event("validation", step=pos["step"], epoch=pos["epoch"], split=split, result=result)
    if run.dist.main:
        logger.info(format_result(result))
    if pos["best"] is None or value > pos["best"]["value"]:
        pos["best"] = {"value": value, "metric": name, "step": pos["step"], "epoch": pos["epoch"], "selected_on": split}
        save_best(run)


def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, validate, keep the best checkpoint, test it. Returns the final results dict."""
    validate_config(cfg, check_files=False)  # configs built in Python, not only load_config's
    run = setup_run(cfg)
    pos = start_position(run, resume)
    # resuming drops what was logged after the checkpoint: those steps run again
    metrics = MetricsLogger(run.out, enabled=run.dist.main, resume=resume, resume_step=pos["step"])
    if run.dist.main:
        begin_run(run)
    while pos["step"] < run.total_steps and pos["epoch"] < cfg.train.epochs:
        train_epoch(run, pos, metrics, progress)
        if selection_split(cfg) and (pos["epoch"] % cfg.train.eval_every == 0 or pos["step"] >= run.total_steps):
            validate(run, pos, metrics, progress)
        save_last(run, pos)
        metrics.plot()
    results = finish_run(run, pos, progress)
    metrics.close()
    return results


def start_position(run: Run, resume: bool) -> dict:
    """The loop position: {"step", "epoch", "step_in_epoch", "best", "skipped" (this process's count of
    skipped videos), "stream" (shards: samples taken per reader this epoch)}; zeros, or with
    ``resume`` checkpoints/last's (its optimiser, scheduler, scaler and RNG states restored too)."""
    pos = {"step": 0, "epoch": 0, "step_in_epoch": 0, "best": None, "skipped": 0, "stream": {}}
    if resume:  # the loop position, and this process's count of skipped videos
        if run.dist.main:  # a save interrupted between its renames: finish or undo it, once
            recover_folder(run.out / "checkpoints" / "last")
        barrier()
        pos = ckpt.load_training_state(
            run.out / "checkpoints" / "last", run.model, run.optimizer, run.scheduler, run.scaler, run.dist.rank
        )
    return pos


def begin_run(run: Run) -> None:
    """Main process: the output folder with config.yaml, and the run's size in one logged line."""
    cfg, t, dist = run.cfg, run.cfg.train, run.dist
    run.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.out / "config.yaml")
    n_train = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    streaming = cfg.data.dataset == "webdataset"
    items = (
        f"{run.dataset.epoch_samples} samples/epoch from {len(run.dataset.urls)} shards"
        if streaming
        else f"{len(run.dataset)} items"
    )
    logger.info(
        f"training {cfg.name}: {items}, {run.sampler.steps_per_epoch} steps/epoch x {t.epochs} epochs "
        f"({run.total_steps} steps), global batch {t.batch_size} on {dist.world} process(es), {n_train / 1e6:.1f} "
        f"M trainable parameters, {run.precision} on {dist.device.type}"
        + (f"; text tower frozen for the first {run.text_frozen_steps} steps" if run.text_frozen_steps else "")
    )


def train_epoch(run: Run, pos: dict, metrics: MetricsLogger, progress: bool) -> None:
    """The optimiser steps of epoch ``pos["epoch"]`` from ``pos["step_in_epoch"]`` on, until the epoch
    or ``run.total_steps`` ends; ``pos`` advances with them (to the next epoch when this one is
    complete). Saves checkpoints/last every ``train.save_every`` steps inside the epoch."""
    t, sampler = run.cfg.train, run.sampler
    epoch = pos["epoch"]
    run.dataset.set_epoch(epoch)
    sampler.set_epoch(epoch, pos["step_in_epoch"])
    loader = make_loader(run, epoch, pos)
    run.model.train()
    bar = tqdm(
        total=sampler.steps_per_epoch,
        initial=pos["step_in_epoch"],
        desc=f"epoch {epoch + 1}/{t.epochs}",
        unit="step",
        disable=not (progress and run.dist.main),
        dynamic_ncols=True,
    )
    tick, clips, losses = time.time(), 0, []
    for micro, batch in enumerate(loader):
        note_batch(pos, batch, metrics)
        last_micro = (micro + 1) % t.accum_steps == 0
        losses.append(backward_micro_batch(run, batch, last_micro))
        clips += batch["frames"].shape[0]
        if not last_micro:
            continue
        grad_norm = optimizer_step(run, pos["step"])
        pos["step"] += 1
        pos["step_in_epoch"] += 1
        loss, losses = torch.stack(losses).mean().item(), []
        bar.update(1)
        if pos["step"] % t.log_every == 0 or pos["step"] == run.total_steps:
            rate = clips * run.dist.world / max(time.time() - tick, 1e-9)
            log_step(run, pos, metrics, loss, grad_norm, rate)
            bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{rate:.1f}")
            tick, clips = time.time(), 0
        if t.save_every and pos["step"] % t.save_every == 0 and pos["step_in_epoch"] < sampler.steps_per_epoch:
            save_last(run, pos)
        if pos["step"] >= run.total_steps:
            break
    bar.close()
    if pos["step_in_epoch"] >= sampler.steps_per_epoch:  # the epoch is complete
        pos["epoch"], pos["step_in_epoch"], pos["stream"] = epoch + 1, 0, {}


def note_batch(pos: dict, batch: dict, metrics: MetricsLogger) -> None:
    """A micro-batch's bookkeeping: its videos that failed to decode (counted in ``pos["skipped"]``,
    each a ``skipped_video`` event), and on shards its reader's position in ``pos["stream"]``."""
    for index, error in batch["failed"]:
        pos["skipped"] += 1
        metrics.event("skipped_video", step=pos["step"] + 1, index=index, error=error)  # the step this batch is part of
    if "stream" in batch:  # shards: samples this batch's reader has taken this epoch
        pos["stream"][int(batch["stream"][0])] = int(batch["stream"][1])


def log_step(run: Run, pos: dict, metrics: MetricsLogger, loss: float, grad_norm: float, rate: float) -> None:
    """The scalars of step ``pos["step"]``: loss (mean over its micro-batches), learning rate, gradient
    norm, clips/s (all processes), skipped videos so far and the logit scale (contrastive models)."""
    scalars = {
        "train/loss": loss,
        "train/lr": run.scheduler.get_last_lr()[0],
        "train/grad_norm": grad_norm,
        "train/clips_per_s": rate,
        "train/skipped_videos": pos["skipped"],
    }
    if hasattr(run.model, "logit_scale"):
        scalars["train/logit_scale"] = run.model.logit_scale().item()
    metrics.scalars(pos["step"], scalars)


def finish_run(run: Run, pos: dict, progress: bool) -> dict:
    """After the last step: the model kept as checkpoints/best (the last one without a validation),
    evaluated on the test split when the config names one; results.json written and the choice
    logged. Returns the results: {"name", "steps", "best", "skipped_videos"}, with "selection" (a
    choice on the test split, or none possible) and "test" when they apply."""
    cfg, dist = run.cfg, run.dist
    if pos["best"] is None:  # no validation split: the final model is the one to keep
        save_best(run)
        pos["best"] = {"metric": None, "step": pos["step"], "epoch": pos["epoch"], "selected_on": "last"}
    results = {"name": cfg.name, "steps": pos["step"], "best": pos["best"], "skipped_videos": pos["skipped"]}
    selection = selection_caveat(cfg)
    if selection:  # say it wherever the numbers go
        results["selection"] = selection
        if dist.main:
            logger.info(selection)
    best = pos["best"]
    if cfg.data.test_ann or cfg.data.test_shards:
        ckpt.load_weights(run.model, run.out / "checkpoints" / "best")
        results["test"] = evaluate(run.model, cfg, "test", dist, progress)
        if dist.main:
            logger.info(
                f"{'best' if best['metric'] else 'last-epoch'} checkpoint on the test split:\n"
                + format_result(results["test"])
            )
    if dist.main:
        (run.out / "results.json").write_text(json.dumps(results, indent=2))
        logger.info(
            f"saved {run.out / 'checkpoints' / 'best'}: {kept_model(cfg, best)}; {run.out / 'checkpoints' / 'last'} "
            f"resumes the run (--resume); results in {run.out / 'results.json'}, curves in {run.out / 'curves.png'}"
        )
    return results


def selection_caveat(cfg: ExperimentConfig) -> Optional[str]:
    """What results.json must say about how checkpoints/best was chosen: on the test split
    (eval.select_on=test), or not at all (data.val_ann is the test file); None otherwise."""
    if cfg.eval.select_on == SelectOn.test:
        return (
            "best checkpoint chosen on the TEST split (eval.select_on=test, the authors' protocol): "
            "the test figures below are optimistic; eval.select_on=val chooses on data.val_ann"
        )
    if val_is_test(cfg):
        return (
            "no checkpoint chosen: data.val_ann is the test file data.test_ann, so the last epoch is kept "
            "(eval.select_on=test would choose on it, labelled)"
        )
    return None


def kept_model(cfg: ExperimentConfig, best: dict) -> str:
    """Which model checkpoints/best holds, in words: the best validation result (metric, split, value,
    epoch, step), or the last epoch's model and why."""
    return (
        f"the best {best['metric']} on the {best['selected_on']} split ({best['value']:.2f} after epoch "
        f"{best['epoch']}, step {best['step']})"
        if best["metric"]
        else "the last epoch's model (data.val_ann is the test file: nothing is chosen on it)"
        if val_is_test(cfg)
        else "the last epoch's model (no validation split, data.val_ann is null)"
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="experiment YAML, or a packaged config by name (msrvtt/stan_vitb32; `mugstan config list`)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-6 data.root=/videos")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/last")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume, progress=not args.no_progress)
    return 0

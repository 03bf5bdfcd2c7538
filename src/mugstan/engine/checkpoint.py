"""Checkpoints: saving and every way of loading one.

A checkpoint is a folder with ``model.safetensors`` (every weight of the model), ``config.yaml``
(the experiment that built it) and, for resuming, ``state.pt`` (optimiser, scheduler, loss scaler,
loop position, the RNG states of every process). It is written whole into a temporary folder and
swapped in (``mugstan.files.atomic_folder``).

- ``save_checkpoint``: write one.
- ``load_model``: rebuild the model a checkpoint folder (or a ``mugstan convert --format
  stan|clip2video`` file) holds, for evaluation, embedding and search.
- ``load_weights``: put a checkpoint's weights into a model built from the same config (the best
  checkpoint before testing).
- ``load_training_state``: weights and loop state for ``--resume``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mugstan.config import ExperimentConfig, load_config, save_config
from mugstan.engine.distributed import unwrap
from mugstan.files import atomic_folder

WEIGHTS, CONFIG, STATE = "model.safetensors", "config.yaml", "state.pt"


def save_checkpoint(path, model, cfg: ExperimentConfig, state: Optional[dict] = None) -> Path:
    """Write ``path/`` atomically. ``state`` (training state) goes to state.pt when given."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    with atomic_folder(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        save_config(cfg, tmp / CONFIG)
        if state is not None:
            torch.save(state, tmp / STATE)
    return path


def load_weights(model, path) -> None:
    """Load ``path/model.safetensors`` into ``model`` (built from the same config); every tensor must fit."""
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS
    missing, unexpected = unwrap(model).load_state_dict(load_file(str(file)), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{file} does not fit the model built from its config.yaml: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_training_state(path, model, optimizer, scheduler, scaler=None, rank: int = 0) -> dict:
    """Restore weights, optimiser, scheduler, scaler and this process's RNG from ``path`` (a
    ``checkpoints/last`` folder). Returns the loop position: {"step", "epoch", "step_in_epoch", "best"}."""
    path = Path(path)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path / STATE}")
    state = torch.load(path / STATE, map_location="cpu", weights_only=False)  # written by this loop, not a download
    load_weights(model, path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
    return {k: state.get(k) for k in ("step", "epoch", "step_in_epoch", "best")}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model(path, device="cpu", overrides=()):
    """Rebuild a model from a checkpoint folder (or a ``mugstan convert --format stan|clip2video``
    file), given as a path or a Hub spec (``mugstan.hub``). ``overrides``: ``model.*`` overrides
    (a parameter-free change such as ``model.head=mug`` on a Mug-STAN checkpoint, or
    ``model.mug_mode=full``). Returns (model in eval mode, ExperimentConfig or None for converted
    files)."""
    from mugstan.hub import resolve_checkpoint
    from mugstan.models import build_model

    path = resolve_checkpoint(path)  # hf-hub:org/name[@revision], local-dir:PATH, or a path
    if path.is_file() and path.suffix == ".safetensors":
        from mugstan.released import load_converted

        return load_converted(path, overrides).to(device).eval(), None
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise FileNotFoundError(f"{path}: not a mugstan checkpoint (expected {WEIGHTS} and {CONFIG} in it)")
    cfg = load_config(path / CONFIG, overrides, check_files=False)
    cfg.model.pretrained, cfg.model.weights = None, None  # the checkpoint holds every weight
    model = build_model(cfg.model)
    load_weights(model, path)
    return model.to(device).eval(), cfg

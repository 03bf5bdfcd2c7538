"""Checkpoints: a folder with ``model.safetensors``, ``config.yaml`` and, for resuming,
``state.pt`` (optimiser, scheduler, loop position, RNG states). Written atomically: into a
temporary folder beside the target, then renamed over it.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mugstan.config import ExperimentConfig, load_config, save_config


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path, model, cfg: ExperimentConfig, state: Optional[dict] = None) -> Path:
    """Write ``path/`` atomically. ``state`` (training state) goes to state.pt when given."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    save_config(cfg, tmp / "config.yaml")
    if state is not None:
        torch.save(state, tmp / "state.pt")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


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
    file). Returns (model in eval mode, ExperimentConfig or None for converted files)."""
    from safetensors.torch import load_file

    from mugstan.models import build_model

    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        from mugstan.backbones.released import load_converted

        return load_converted(path).to(device).eval(), None
    if not (path / "model.safetensors").is_file() or not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: not a mugstan checkpoint (expected model.safetensors and config.yaml in it)")
    cfg = load_config(path / "config.yaml", overrides, check_files=False)
    cfg.model.pretrained, cfg.model.weights = None, None  # the checkpoint holds every weight
    model = build_model(cfg.model)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path}/model.safetensors does not fit its config.yaml: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), cfg

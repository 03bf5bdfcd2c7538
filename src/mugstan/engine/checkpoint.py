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
- ``init_from``: every matching weight of an earlier run (``model.init_from``) before training.
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


def read_weights(spec) -> dict:
    """The tensors of a checkpoint folder, a ``mugstan convert`` file or a Hub spec of either."""
    from safetensors.torch import load_file

    from mugstan.hub import resolve_checkpoint

    path = resolve_checkpoint(spec)
    file = path if path.is_file() else path / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"model.init_from: {spec} is neither a checkpoint folder ({WEIGHTS} + {CONFIG}) nor a converted .safetensors file")
    return load_file(str(file))


def init_from(model, spec) -> dict:
    """Copy every weight of ``spec`` whose name and shape fit ``model`` (a retrieval checkpoint's
    weights go under ``encoder.`` in a classifier). A fixed temperature stays the config's. Returns
    {"loaded": n, "new": [names kept at initialisation], "unused": [checkpoint names not used]};
    a tensor of the right name and the wrong shape is an error (the architectures differ)."""
    from mugstan.heads.base import LogitScale

    state = read_weights(spec)
    model = unwrap(model)
    fixed = {f"{name}.log_scale" for name, m in model.named_modules() if isinstance(m, LogitScale) and m.fixed}
    own = model.state_dict()
    loaded, new, used, wrong = {}, [], set(), []
    for name, tensor in own.items():
        source = name if name in state else name.removeprefix("encoder.")
        if name in fixed or source not in state:
            new.append(name)
        elif state[source].shape != tensor.shape:
            wrong.append(f"{name} {tuple(tensor.shape)} vs {source} {tuple(state[source].shape)}")
        else:
            loaded[name] = state[source]
            used.add(source)
    if wrong:
        raise ValueError(f"model.init_from: {spec} has tensors of other shapes than this model ({'; '.join(wrong[:4])}); "
                         "the two configs describe different architectures (backbone, stan.max_frames, ...)")
    if not loaded:
        raise ValueError(f"model.init_from: no tensor of {spec} fits this model (is it a mugstan checkpoint of the same backbone?)")
    model.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "new": new, "unused": sorted(set(state) - used)}


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

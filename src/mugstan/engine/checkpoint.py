"""Checkpoints: saving and every way of loading one.

A checkpoint is a folder with ``model.safetensors`` (every weight of the model), ``config.yaml``
(the experiment that built it) and, for resuming, ``state.pt`` (optimiser, scheduler, loss scaler,
loop position, the RNG states of every process). It is written whole into a temporary folder and
swapped in (``mugstan.files.atomic_folder``); a write interrupted between its renames is finished
on the next save or ``--resume`` (``recover_folder``, on the main process), and readers use the
latest complete folder.
Damaged files are ``CorruptFileError``s naming the file; ``state.pt`` is read with
``torch.load(weights_only=True)`` (plain tensors and numbers, no pickled objects).

- ``save_checkpoint``: write one.
- ``load_model``: rebuild the model a checkpoint folder (or a ``mugstan convert --format
  stan|clip2video`` file) holds, for evaluation, embedding and search.
- ``load_weights``: put a checkpoint's weights into a model built from the same config (the best
  checkpoint before testing).
- ``load_training_state``: weights and loop state for ``--resume``.
- ``init_from``: every matching weight of an earlier run (``model.init_from``) before training.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mugstan.config import ExperimentConfig, Task, load_config, save_config
from mugstan.engine.distributed import device_generators, unwrap
from mugstan.errors import CorruptFileError, MismatchError, MissingFileError, UserError, one_line
from mugstan.files import atomic_folder, read_safetensors, readable_folder

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
    file = readable_folder(path) / WEIGHTS
    tensors = read_safetensors(file, "the checkpoint is damaged: train again, or use another checkpoint")
    try:
        missing, unexpected = unwrap(model).load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # shapes that do not fit
        raise MismatchError(
            f"{file} does not fit the model built from its config.yaml ({one_line(err)[:300]})"
        ) from None
    if missing or unexpected:
        raise MismatchError(
            f"{file} does not fit the model built from its config.yaml: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )


def read_weights(spec) -> dict:
    """The tensors of a checkpoint folder, a ``mugstan convert`` file or a Hub spec of either."""
    from mugstan.hub import resolve_checkpoint

    path = resolve_checkpoint(spec)
    file = path if path.is_file() else path / WEIGHTS
    if not file.is_file():
        raise MissingFileError(
            f"model.init_from: {spec} is neither a checkpoint folder ({WEIGHTS} + {CONFIG}) nor a converted "
            ".safetensors file; name a run's checkpoints/best, a `mugstan convert` file or hf-hub:ORG/NAME"
        )
    return read_safetensors(
        file,
        f"model.init_from: {spec} is damaged or not weights; model.init_from takes a checkpoint "
        "folder or a `mugstan convert` .safetensors file (a damaged one: train it again or download it again)",
    )


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
        raise MismatchError(
            f"model.init_from: {spec} has tensors of other shapes than this model ({'; '.join(wrong[:4])}); "
            "the two configs describe different architectures (backbone, stan.max_frames, ...)"
        )
    if not loaded:
        raise MismatchError(
            f"model.init_from: no tensor of {spec} fits this model (is it a mugstan checkpoint of the same backbone?)"
        )
    model.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "new": new, "unused": sorted(set(state) - used)}


def load_training_state(path, model, optimizer, scheduler, scaler=None, rank: int = 0) -> dict:
    """Restore weights, optimiser, scheduler, scaler and this process's RNG from ``path`` (a
    ``checkpoints/last`` folder). Returns the loop position: {"step", "epoch", "step_in_epoch", "best",
    "skipped" (this process's count of skipped videos), "stream" (this process's shard stream positions)}. A
    save interrupted between its renames must have been recovered first (``mugstan.files.recover_folder``;
    ``train`` does it on the main process)."""
    path = Path(path)
    if not (path / STATE).is_file():
        raise MissingFileError(f"--resume: no checkpoint at {path / STATE}; train without --resume to start the run")
    rebuild = "resume from another copy, or train again without --resume (this run's checkpoint cannot be read)"
    try:  # tensors, numbers and numpy arrays only: nothing in the file runs
        with torch.serialization.safe_globals(_numpy_arrays()):
            state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file (and advice to unpickle, not given here)
        raise CorruptFileError(
            f"{path / STATE}: corrupt or not a mugstan training state ({type(err).__name__}); {rebuild}"
        ) from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "rng"} <= set(state):
        raise CorruptFileError(f"{path / STATE}: not a mugstan training state (no optimizer/scheduler/rng); {rebuild}")
    load_weights(model, path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError) as err:
        raise MismatchError(
            f"{path / STATE}: the optimiser state does not fit this config ({one_line(err)}); resume with the "
            "config the run was started with (its output_dir/config.yaml)"
        ) from None
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
    skipped = state.get("skipped") or 0  # per process
    stream = state.get("stream") or [{}] * (rank + 1)  # per process: {loader worker role: samples taken} (shards)
    position = {k: state.get(k) for k in ("step", "epoch", "step_in_epoch", "best")}
    return {
        **position,
        "skipped": skipped[rank] if isinstance(skipped, list) else skipped,
        "stream": dict(stream[rank]),
    }


def _numpy_arrays() -> list:
    """What ``torch.load(weights_only=True)`` needs to rebuild plain numpy arrays: the numpy RNG
    state in checkpoints written before it was stored as a tensor (arrays of numbers, never objects)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_state(generators: Optional[Sequence[torch.Generator]] = None) -> dict:
    """Every RNG's state as tensors, numbers and tuples (what ``torch.load(weights_only=True)`` reads);
    generators: the accelerators' (default ``device_generators()``: CUDA's), stored under "cuda"."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    generators = device_generators() if generators is None else generators
    if generators:
        state["cuda"] = [g.get_state() for g in generators]
    return state


def set_rng_state(state: dict, generators: Optional[Sequence[torch.Generator]] = None) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    generators = device_generators() if generators is None else generators
    # a state saved on another machine's GPUs: as many as both have
    for g, device_state in zip(generators, state.get("cuda", ()), strict=False):
        g.set_state(device_state)


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
    path = readable_folder(path)
    if not path.exists():
        raise MissingFileError(
            f"checkpoint {path} does not exist; name a checkpoint folder (runs/NAME/checkpoints/best) "
            "or a `mugstan convert` .safetensors file"
        )
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise UserError(
            f"{path}: not a mugstan checkpoint (expected {WEIGHTS} and {CONFIG} in it, or a .safetensors file)"
        )
    cfg = load_config(path / CONFIG, overrides, check_files=False)
    if cfg.model.backbone is None and cfg.model.backbone_config is None and cfg.model.task != Task.chat:
        raise UserError(
            f"{path / CONFIG}: model.backbone is null and no model.backbone_config records the architecture the "
            f"model was built with (it was read from model.weights={cfg.model.weights}, by an older mugstan); give it "
            "as an override: model.backbone=NAME, or model.backbone_config={...} (its open_clip config, with the head "
            "counts it was trained with)"
        )
    cfg.model.pretrained, cfg.model.weights = None, None  # the checkpoint holds every weight
    if path.parent.name == "checkpoints":  # RUN/checkpoints/NAME: the run folder is where it is now, moved or not
        cfg.train.output_dir = os.path.abspath(path.parent.parent)
    model = build_model(cfg.model)
    load_weights(model, path)
    return model.to(device).eval(), cfg

"""Load checkpoints by name from the Hugging Face Hub, and publish them: ``mugstan push``.

Where a checkpoint or weights path is taken, three spellings are accepted:

- a plain path (a checkpoint folder, a ``.safetensors`` file, ...), passed through unchanged;
- ``hf-hub:org/name`` or ``hf-hub:org/name@revision`` (a branch, tag or commit): the repository
  is downloaded with ``huggingface_hub.snapshot_download`` into its cache (``HF_HOME`` /
  ``HF_HUB_CACHE``), once; with ``HF_HUB_OFFLINE=1`` only the cache is used;
- ``local-dir:PATH``: a folder laid out like a Hub repository (e.g. a clone, or what
  ``mugstan push --local-dir`` writes).

A mugstan model repository holds one of two layouts, and ``resolve_checkpoint`` returns what
``mugstan.engine.checkpoint.load_model`` takes:

- a trained checkpoint: ``model.safetensors`` + ``config.yaml`` (+ ``README.md``) -> the folder;
- a converted released checkpoint (``mugstan convert --format stan|clip2video``): that file,
  unchanged, as ``model.safetensors`` (its metadata holds the ``model_config``; no
  ``config.yaml``) + ``README.md`` -> the ``model.safetensors`` file.

``mugstan push CHECKPOINT org/name`` uploads one of these layouts with a generated model card;
training state (``state.pt``) is never uploaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional, Union

import yaml

from mugstan.errors import UserError

HF_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
CARD_FILE = "README.md"
# what a checkpoint repository needs; the model card comes along for the record
CHECKPOINT_FILES = [MODEL_FILE, CONFIG_FILE, CARD_FILE]
# CLIP weights (model.weights): a HuggingFace CLIPModel folder or a single safetensors file
WEIGHTS_FILES = ["config.json", "*.safetensors"]
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class HubError(UserError, ValueError):
    """A spec that cannot be resolved or a checkpoint that cannot be pushed; one line that names
    the spec or file and the fix."""


def is_spec(path: Union[str, Path]) -> bool:
    """Whether ``path`` is an ``hf-hub:`` or ``local-dir:`` spec rather than a plain path."""
    return isinstance(path, str) and path.startswith((HF_PREFIX, LOCAL_PREFIX))


def parse_hf_spec(spec: str) -> tuple[str, Optional[str]]:
    """``hf-hub:org/name[@revision]`` -> (``org/name``, revision or None)."""
    body = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    repo_id, _, revision = body.partition("@")
    if not REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise HubError(f"{spec}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION (letters, digits, '-', '_', '.')")
    if "@" in body and not revision:
        raise HubError(f"{spec}: empty revision after '@' (name a branch, tag or commit, or leave out '@')")
    return repo_id, revision or None


def _one_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint (``HF_ENDPOINT``) opens within ``timeout``
    seconds. Behind a proxy (``HTTPS_PROXY`` ...) the answer is yes: only the proxy knows."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ):
            return True
    except OSError:  # no route, no DNS, refused, timed out
        return False


@contextlib.contextmanager
def offline_unless_reachable():
    """Within the block, Hugging Face downloads read only the cache when the Hub cannot be reached:
    a missing file then fails at once instead of after huggingface_hub's retries (5 per file,
    1 + 2 + 4 + 8 + 8 s: about 70 s for an open_clip tag offline)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _download(spec: str, allow_patterns: Optional[list[str]]) -> Path:
    """The cached snapshot folder of an ``hf-hub:`` spec (downloaded when online and missing)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = parse_hf_spec(spec)
    try:
        with offline_unless_reachable():
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns))
    except LocalEntryNotFoundError as err:
        if constants.HF_HUB_OFFLINE:
            raise HubError(
                f"{spec}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1; "
                "run once online or set HF_HUB_OFFLINE=0"
            ) from None
        raise HubError(
            f"{spec}: the Hub cannot be reached and it is not in the cache ({constants.HF_HUB_CACHE}): "
            f"check the connection, or use a local path ({_one_line(err)})"
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{spec}: gated repository; accept its terms on https://huggingface.co/{repo_id} and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{spec}: no model repository {repo_id} on the Hub (check the name; a private one needs "
            "`hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"{spec}: {repo_id} has no revision {revision!r} (name a branch, tag or commit that exists)"
        ) from None
    except HfHubHTTPError as err:
        raise HubError(f"{spec}: the Hub answered {_one_line(err)}") from None
    except OSError as err:  # e.g. an incomplete cached snapshot while offline, a full disk
        raise HubError(f"{spec}: {_one_line(err)}") from None


def resolve_path(spec: Union[str, Path], allow_patterns: Optional[list[str]] = None) -> Path:
    """A plain path unchanged (as a Path); ``local-dir:PATH`` -> that folder (which must exist);
    ``hf-hub:org/name[@revision]`` -> its snapshot folder in the Hugging Face cache, downloading
    the files that match ``allow_patterns`` (all when None) if they are not cached."""
    if not is_spec(spec):
        return Path(spec)
    if spec.startswith(LOCAL_PREFIX):
        folder = Path(spec[len(LOCAL_PREFIX) :]).expanduser()
        if not folder.is_dir():
            raise HubError(
                f"{spec}: {folder} is not a folder (local-dir: names a folder laid out like a Hub repository)"
            )
        return folder
    return _download(spec, allow_patterns)


def _converted_model_config(path: Path) -> Optional[dict]:
    """The ``model_config`` in the metadata of a ``mugstan convert --format stan|clip2video`` file
    (None when the metadata has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise HubError(f"{path}: cannot be read as safetensors ({_one_line(err)})") from None
    if "model_config" not in meta:
        return None
    try:
        return json.loads(meta["model_config"])
    except json.JSONDecodeError as err:
        raise HubError(f"{path}: the model_config in its metadata is not JSON ({err})") from None


def _checkpoint_in(folder: Path, spec: str) -> Path:
    """The loadable checkpoint of a repository folder: the folder (trained layout) or its
    model.safetensors (converted layout)."""
    model = folder / MODEL_FILE
    if not model.is_file():
        raise HubError(
            f"{spec}: no {MODEL_FILE} in {folder} (a mugstan repository holds {MODEL_FILE}, "
            f"and {CONFIG_FILE} unless it is a converted file; upload one with `mugstan push`)"
        )
    if (folder / CONFIG_FILE).is_file():
        return folder
    if _converted_model_config(model) is None:
        raise HubError(
            f"{spec}: {folder} has {MODEL_FILE} but no {CONFIG_FILE}, and the file's metadata holds no "
            "model_config; it is not a mugstan model (upload one with `mugstan push`)"
        )
    return model


def resolve_checkpoint(spec: Union[str, Path]) -> Path:
    """A checkpoint spec -> what ``load_model`` takes.

    Plain paths pass through unchanged (``Path(spec)``; the loader reports their problems).
    ``hf-hub:org/name[@revision]`` (downloads model.safetensors, config.yaml and README.md, or
    finds them in the cache) and ``local-dir:PATH`` -> the folder when it holds
    ``model.safetensors`` and ``config.yaml``, else its ``model.safetensors`` when that is a
    converted file (``model_config`` in its metadata). Raises HubError otherwise.
    """
    if not is_spec(spec):
        return Path(spec)
    return _checkpoint_in(resolve_path(spec, CHECKPOINT_FILES), spec)


def resolve_weights(spec: Union[str, Path]) -> Path:
    """A CLIP weights spec (``model.weights``) -> a path the CLIP weights loaders take.

    Plain paths pass through unchanged. ``hf-hub:`` (downloads ``config.json`` and
    ``*.safetensors`` only: never pickles) and ``local-dir:`` -> the folder when it holds
    ``config.json`` (a HuggingFace ``CLIPModel``), else its one ``.safetensors`` file.
    """
    if not is_spec(spec):
        return Path(spec)
    folder = resolve_path(spec, WEIGHTS_FILES)
    if (folder / "config.json").is_file():
        return folder
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise HubError(
            f"{spec}: expected a HuggingFace CLIPModel (config.json) or one .safetensors file in {folder}, "
            f"found .safetensors: {found}"
        )
    return files[0]


# ---- push --------------------------------------------------------------------------------

METHODS = {
    "mean": "mean pooling",
    "meanP": "CLIP4Clip (meanP)",
    "seqTransf": "CLIP4Clip (seqTransf)",
    "tdb_tab": "CLIP2Video (TDB + TAB)",
    "mug": "Mug",
}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HubError(f"{path}: invalid YAML ({_one_line(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise HubError(f"{path}: not a mugstan experiment config (no model section)")
    return data


def method_name(model: dict, source: str = "config") -> str:
    """A model config section -> the method's name: "Mug-STAN (STAN-self)", "CLIP2Video (TDB + TAB)", ..."""
    branch, head = model.get("branch", "none"), model.get("head", "meanP")  # mugstan.config's defaults
    if branch not in ("none", "stan") or head not in METHODS:
        raise HubError(f"{source}: unknown model.branch {branch!r} / model.head {head!r}")
    if branch == "none":
        return METHODS[head]
    stan = f"STAN-{(model.get('stan') or {}).get('time_module', 'self')}"
    if head == "mug":
        return f"Mug-STAN ({stan})"
    return stan if head == "mean" else f"{stan} + {METHODS[head]}"


def find_results(checkpoint: Path) -> Optional[Path]:
    """The run's results.json: next to the checkpoint, or in the run folder above
    ``checkpoints/<name>`` (where ``mugstan train`` writes it)."""
    if not checkpoint.is_dir():
        return None
    for candidate in (checkpoint / "results.json", checkpoint.parent.parent / "results.json"):
        if candidate.is_file():
            return candidate
    return None


def _metrics_lines(results: dict, source: str) -> list[str]:
    """Markdown for ``mugstan train``'s results.json ({"best", "test"}) or an ``eval --json`` result."""
    lines = []
    best = results.get("best") or {}
    if best.get("metric"):
        lines.append(
            f"Best validation {best['metric']}: {best['value']:.1f} (step {best.get('step')}, epoch "
            f"{best.get('epoch')})."
        )
    result = results if "split" in results else results.get("test")
    if result:
        lines += ["", f"On the {result.get('split', 'test')} split (from `{source}`):", ""]
        retrieval = result.get("retrieval") or {}
        if retrieval:
            lines += ["| direction | R@1 | R@5 | R@10 | MdR | MnR |", "|---|---:|---:|---:|---:|---:|"]
            lines += [
                f"| {name} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | {m['MdR']:.1f} | {m['MnR']:.1f} |"
                for name, m in retrieval.items()
            ]
        if "recognition" in result:
            r = result["recognition"]
            kind = "zero-shot " if result.get("zero_shot") else ""
            lines += [
                "| metric | value |",
                "|---|---:|",
                f"| {kind}top-1 | {r['top1']:.1f} |",
                f"| {kind}top-5 | {r['top5']:.1f} |",
            ]
        if "detection" in result:
            lines += ["| metric | value |", "|---|---:|", f"| frame-mAP@0.5 | {result['detection']['mAP']:.2f} |"]
        if "qa" in result:
            q = result["qa"]
            lines += [
                "| metric | value |",
                "|---|---:|",
                f"| QA exact-match accuracy | {q['accuracy']:.1f} |",
                f"| questions | {q['questions']} |",
            ]
        if result.get("dropped"):
            lines += ["", f"{len(result['dropped'])} videos of the split could not be decoded and were left out."]
    if not lines:
        raise HubError(
            f"{source}: holds no metrics (expected `best`/`test` from `mugstan train` or an `eval --json` result)"
        )
    return lines


def _table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows if v not in (None, "", []))]


# the task's words, Hub tags, pipeline tag and metric ids of a card (model.task)
TASKS = {
    "retrieval": ("video-text retrieval", ["video-text-retrieval"], None, ["recall"]),
    "recognition": ("video recognition", ["video-classification"], "video-classification", ["accuracy"]),
    "detection": ("spatio-temporal action detection", ["action-detection", "ava"], None, ["mean_average_precision"]),
    "chat": (
        "video chat and video question answering",
        ["video-question-answering", "llava"],
        "video-text-to-text",
        ["exact_match"],
    ),
}
# data.dataset values that name a file format rather than a dataset (left out of the card's datasets)
FORMATS = {"jsonl", "video_list", "kinetics_csv", "webdataset"}


def _hub_name(value: Optional[str]) -> Optional[str]:
    """A Hub repository id from a weights source (``hf-hub:org/name[@rev]`` or a bare ``org/name`` that is not a
    local path), else None: base_model names repositories only."""
    if not value:
        return None
    if value.startswith(HF_PREFIX):
        return parse_hf_spec(value)[0]
    return value if REPO_ID.fullmatch(value) and not Path(value).expanduser().exists() else None


def model_card(
    repo_id: str,
    config: Optional[dict],
    model: dict,
    results: Optional[dict] = None,
    results_source: str = "results.json",
    source: str = "config",
    license: str = "mit",
) -> str:
    """The README.md of a pushed model, written for its task (``model.task``: retrieval, recognition, detection, chat).

    ``config``: the experiment config (None for a converted file), ``model``: its model section
    (or a converted file's model_config), ``results``: results.json / an eval --json result.
    Front matter: library_name, license, tags, pipeline_tag, base_model (a Hub repository it started
    from: the LLaVA checkpoint of a chat model, ``hf-hub:`` CLIP weights), datasets and metrics.
    """
    from huggingface_hub import ModelCardData

    task = model.get("task", "retrieval")
    if task not in TASKS:
        raise HubError(f"{source}: unknown model.task {task!r} (expected {', '.join(TASKS)})")
    words, task_tags, pipeline, metrics = TASKS[task]
    method = method_name(model, source)
    if task == "detection":  # the head is the RoI head, whatever model.head says
        method = (
            method.split(" + ")[0] if model.get("branch") == "stan" else "CLIP"
        ) + " + RoI head (mmaction2's BBoxHeadAVA)"
    chat = model.get("chat") or {}
    if task == "chat":
        if not chat.get("llava"):
            raise HubError(f"{source}: model.chat.llava is missing")
        branch = (
            "STAN-" + (model.get("stan") or {}).get("time_module", "self") if model.get("branch") == "stan" else None
        )
        method = f"LLaVA ({chat['llava']})" + (f" + {branch} video tokens" if branch else " with CLIP frame tokens")
        base = _hub_name(chat["llava"])
    elif "backbone" not in model and not model.get("backbone_config"):
        raise HubError(f"{source}: model.backbone is missing")
    else:
        base = _hub_name(model.get("weights")) or _hub_name(model.get("init_from"))
    tags = ["mugstan", "video", *([] if task == "chat" else ["clip"]), *task_tags]
    tags += [
        t
        for t, present in (
            ("stan", "STAN" in method),
            ("clip4clip", "CLIP4Clip" in method),
            ("clip2video", "CLIP2Video" in method),
        )
        if present
    ]
    data = (config or {}).get("data") or {}
    dataset = data.get("dataset")
    meta = ModelCardData(
        library_name="mugstan",
        license=license,
        tags=tags,
        pipeline_tag=pipeline,
        base_model=base,
        datasets=[dataset] if dataset and dataset not in FORMATS else None,
        metrics=metrics,
    )
    backbone = model.get("backbone") or "a custom open_clip architecture"
    on = f"LLaVA checkpoint {chat.get('llava')}" if task == "chat" else f"{backbone} CLIP backbone"
    lines = [
        "---",
        meta.to_yaml(),
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A {method} model for {words} on the {on}, made with mugstan.",
        "",
        "## Model",
        "",
    ]
    if task == "chat":
        lines += _table(
            [
                ("language model and projector", chat.get("llava")),
                ("branch", model.get("branch")),
                ("video tokens", chat.get("video_tokens", "temporal_spatial")),
                ("feature layer", chat.get("feature_layer", "LLaVA's vision_feature_layer")),
                ("trained parts", ", ".join(chat.get("tune") or ["projector"])),
                ("branch weights it started from", chat.get("branch_weights")),
            ]
        )
        lines += [
            "",
            (
                "The checkpoint holds the trained parts (and the branch) only: the language model, its tower and "
                f"tokenizer come from {chat['llava']} when it is loaded."
            ),
        ]
    else:
        weights = model.get("pretrained") or (Path(model["weights"]).name if model.get("weights") else None)
        lines += _table(
            [
                ("method", method),
                ("backbone", backbone),
                ("CLIP weights it started from", weights),
                ("task", task),
                ("classifier", model.get("classifier") if task == "recognition" else None),
                ("classes", model.get("num_classes") if task in ("recognition", "detection") else None),
                ("temperature", model.get("temperature") if task == "retrieval" else None),
            ]
        )
    if config is None:
        lines += [
            "",
            (
                "Converted from the authors' released checkpoint with `mugstan convert`; "
                "the training recipe and data are those of the original release."
            ),
        ]
    else:
        train = config.get("train") or {}
        lines += ["", "## Recipe", ""]
        lines += _table(
            [
                ("epochs", train.get("epochs")),
                ("batch size", train.get("batch_size")),
                ("learning rate", train.get("lr")),
                ("weight decay", train.get("weight_decay")),
                ("warmup", train.get("warmup")),
                ("precision", train.get("precision")),
                ("gradient-cache chunk", train.get("chunk_size")),
            ]
        )
        lines += ["", "## Data", ""]
        lines += _table(
            [
                ("dataset format", dataset),
                ("training annotations", Path(data["train_ann"]).name if data.get("train_ann") else None),
                ("frames per clip", data.get("num_frames")),
                ("frame size", f"{data['image_size']} px" if data.get("image_size") else None),
            ]
        )
        lines += ["", f"The full experiment config is `{CONFIG_FILE}` in this repository."]
    lines += ["", "## Results", ""]
    try:
        lines += (
            _metrics_lines(results, results_source)
            if results
            else ["No evaluation results were published with this model."]
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise HubError(
            f"{results_source}: unexpected results layout ({type(err).__name__}: {err}); expected "
            "`mugstan train`'s results.json or an `eval --json` result"
        ) from None
    use = {
        "retrieval": [
            f"mugstan eval CONFIG.yaml --checkpoint hf-hub:{repo_id}      # CONFIG: your data and eval settings",
            f"mugstan index ~/videos --checkpoint hf-hub:{repo_id} --out videos.index",
        ],
        "recognition": [
            f"mugstan eval CONFIG.yaml --checkpoint hf-hub:{repo_id}      # CONFIG: your data and eval settings"
        ],
        "detection": [f"mugstan eval CONFIG.yaml --checkpoint hf-hub:{repo_id}      # CONFIG: your AVA-format data"],
        "chat": [
            f'mugstan chat VIDEO.mp4 "what happens?" --checkpoint hf-hub:{repo_id}',
            f"mugstan eval CONFIG.yaml --checkpoint hf-hub:{repo_id}      # CONFIG: a Video QA split",
        ],
    }[task]
    lines += [
        "",
        "## How to use it",
        "",
        "```bash",
        "pip install mugstan",
        *use,
        "```",
        "",
        "```python",
        "from mugstan.engine.checkpoint import load_model",
        "from mugstan.hub import resolve_checkpoint",
        "",
        f'model, config = load_model(resolve_checkpoint("hf-hub:{repo_id}"))',
        "```",
        "",
    ]
    if task != "chat":
        lines += [
            "The CLIP part alone is also in open_clip's layout (`open_clip_config.json` + "
            "`open_clip_model.safetensors`):",
            "",
            "```python",
            "import open_clip",
            "",
            f'clip = open_clip.create_model("hf-hub:{repo_id}")',
            "```",
            "",
        ]
    lines += [
        (
            f"Add `@REVISION` (a branch, tag or commit) to pin a version: `hf-hub:{repo_id}@main`. "
            "Downloads are cached; with `HF_HUB_OFFLINE=1` only the cache is used."
        ),
        "",
    ]
    return "\n".join(lines)


OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"


def open_clip_layout(model: dict, weights_file: Path, source: str) -> Optional[tuple[dict, dict]]:
    """The CLIP part of a checkpoint in open_clip's Hub layout: (``open_clip_config.json`` content, the CLIP
    tensors without their prefix), what ``open_clip.create_model("hf-hub:org/name")`` loads. None for a chat
    model (its tower is LLaVA's, in the LLaVA checkpoint). The activation is the one the weights were trained
    with: QuickGELU when the config or the open_clip pretrained tag says so (OpenAI's weights)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from safetensors import safe_open

    from mugstan.backbones import register_configs

    if model.get("task") == "chat":
        return None
    if model.get("backbone_config"):
        config = dict(model["backbone_config"])
    else:
        register_configs()
        config = open_clip.get_model_config(model.get("backbone") or "")
        if config is None:
            raise HubError(f"{source}: model.backbone {model.get('backbone')!r} is not an open_clip model name")
        if model.get("pretrained") and (open_clip.get_pretrained_cfg(model["backbone"], model["pretrained"]) or {}).get(
            "quick_gelu"
        ):
            config["quick_gelu"] = True
        elif model.get("weights"):
            from mugstan.backbones.convert import load_clip_weights

            try:
                config["quick_gelu"] = bool(
                    load_clip_weights(resolve_weights(model["weights"])).config.get("quick_gelu")
                )
            except (OSError, UserError) as err:
                raise HubError(
                    f"{source}: the CLIP weights it started from ({model['weights']}) say which activation it uses, "
                    f"and cannot be read ({_one_line(err)}); make them available or pass --no-open-clip"
                ) from None
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith("clip.visual.conv1.weight")), None)
            if key is None:
                raise HubError(f"{weights_file}: holds no CLIP tensors (*clip.visual.*); pass --no-open-clip")
            prefix = key[: -len("visual.conv1.weight")]
            tensors = {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except HubError:
        raise
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise HubError(f"{weights_file}: cannot be read as safetensors ({_one_line(err)})") from None
    preprocess = {
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    return {"model_cfg": config, "preprocess_cfg": preprocess}, tensors


def stage(
    checkpoint: Union[str, Path],
    repo_id: str,
    folder: Union[str, Path],
    results: Union[str, Path, None] = None,
    license: str = "mit",
    open_clip: bool = True,
) -> list[str]:
    """Write the files ``push`` uploads for ``checkpoint`` into ``folder``; returns their names.

    ``checkpoint``: a checkpoint folder (model.safetensors + config.yaml; state.pt is left out)
    or a ``mugstan convert --format stan|clip2video`` file (copied unchanged as
    model.safetensors). ``results``: a results.json or ``eval --json`` file for the card; by
    default the run's results.json when there is one (``find_results``). ``open_clip``: also write
    the CLIP part in open_clip's layout (``open_clip_layout``; not for chat models).
    """
    from safetensors.torch import save_file

    parse_hf_spec(repo_id)
    checkpoint, folder = Path(checkpoint), Path(folder)
    if checkpoint.is_dir():
        for name in (MODEL_FILE, CONFIG_FILE):
            if not (checkpoint / name).is_file():
                raise HubError(
                    f"{checkpoint}: not a mugstan checkpoint (no {name}; expected {MODEL_FILE} and {CONFIG_FILE})"
                )
        config = _read_yaml(checkpoint / CONFIG_FILE)
        model, card_source = config["model"], str(checkpoint / CONFIG_FILE)
        files = {MODEL_FILE: checkpoint / MODEL_FILE, CONFIG_FILE: checkpoint / CONFIG_FILE}
    elif checkpoint.is_file() and checkpoint.suffix == ".safetensors":
        model = _converted_model_config(checkpoint)
        if model is None:
            raise HubError(
                f"{checkpoint}: no model_config in its metadata; push takes a checkpoint folder or a "
                "`mugstan convert --format stan|clip2video` file (CLIP weights alone are not a video model)"
            )
        config, card_source = None, f"{checkpoint} metadata"
        files = {MODEL_FILE: checkpoint}
    else:
        raise HubError(f"{checkpoint}: no such checkpoint folder or .safetensors file")
    results_path = Path(results) if results else find_results(checkpoint)
    results_data = None
    if results_path is not None:
        try:
            results_data = json.loads(results_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HubError(f"{results_path}: cannot read the results ({_one_line(err)})") from None
    card = model_card(
        repo_id, config, model, results_data, results_path.name if results_path else "", card_source, license
    )
    clip = open_clip_layout(model, files[MODEL_FILE], card_source) if open_clip else None
    if folder.resolve() in (checkpoint.resolve(), checkpoint.resolve().parent):
        raise HubError(f"{folder}: holds the checkpoint itself; write the repository folder somewhere else")
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, folder / name)
    (folder / CARD_FILE).write_text(card)
    names = [*files, CARD_FILE]
    if clip is not None:
        (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(clip[0], indent=2) + "\n")
        save_file(
            {k: v.contiguous() for k, v in clip[1].items()}, str(folder / OPEN_CLIP_WEIGHTS), metadata={"format": "pt"}
        )
        names += [OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS]
    return sorted(names)


def push(
    checkpoint: Union[str, Path],
    repo_id: str,
    results: Union[str, Path, None] = None,
    private: bool = False,
    commit_message: Optional[str] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    license: str = "mit",
    open_clip: bool = True,
) -> str:
    """Upload ``checkpoint`` to ``repo_id`` (created if missing) in the layout ``hf-hub:`` loads,
    with a generated model card; returns the commit URL (the pull request's with ``create_pr``).
    ``token``: a Hub token (default: the login, ``hf auth login`` or HF_TOKEN); ``revision``: the branch
    to commit to (created from main if missing; with ``create_pr``, the pull request's base)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with tempfile.TemporaryDirectory(prefix="mugstan-push-") as tmp:
        names = stage(checkpoint, repo_id, tmp, results, license, open_clip)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private or None, exist_ok=True)
            if revision and not create_pr:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            # a converted file replacing a trained checkpoint must not leave the old config.yaml behind,
            # nor a chat model an open_clip layout of an earlier push
            stale = [CONFIG_FILE, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS]
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                delete_patterns=[n for n in stale if n not in names],
                commit_message=commit_message or f"mugstan push: {', '.join(names)}",
                revision=revision,
                create_pr=create_pr,
            )
        except (HfHubHTTPError, OSError) as err:  # not logged in, no write access, no connection
            raise HubError(
                f"{repo_id}: upload failed ({_one_line(err)}); log in with `hf auth login`, set HF_TOKEN or pass "
                "--token, with write access"
            ) from None
    return str(info.pr_url if create_pr and info.pr_url else info.commit_url)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="checkpoint folder (e.g. runs/NAME/checkpoints/best), a `mugstan convert "
        "--format stan|clip2video` .safetensors, or an hf-hub: / local-dir: spec",
    )
    parser.add_argument("repo_id", help="the Hub repository, ORG/NAME")
    parser.add_argument(
        "--results",
        help="results.json or `mugstan eval --json` file for the model card "
        "(default: the run's results.json when there is one)",
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", help="commit message")
    parser.add_argument(
        "--local-dir", help="write the repository folder here instead of uploading (load it with local-dir:PATH)"
    )
    parser.add_argument(
        "--token", help="a Hugging Face token with write access (default: the login, `hf auth login` or HF_TOKEN)"
    )
    parser.add_argument(
        "--revision", help="the branch to commit to (created from main if missing); with --create-pr, the PR's base"
    )
    parser.add_argument(
        "--create-pr", action="store_true", help="open a pull request with the files instead of committing"
    )
    parser.add_argument(
        "--license",
        default="mit",
        help="the card's license (Hub license id; default mit, mugstan's; the "
        "weights may inherit their base model's, e.g. llama2 for LLaVA-1.5)",
    )
    parser.add_argument(
        "--no-open-clip", action="store_true", help="leave out open_clip_config.json + open_clip_model.safetensors"
    )


def main(args: argparse.Namespace) -> int:
    checkpoint = resolve_checkpoint(args.checkpoint)
    if args.local_dir:
        if args.token or args.revision or args.create_pr:
            raise HubError("--token, --revision and --create-pr are for uploading; leave them out with --local-dir")
        names = stage(checkpoint, args.repo_id, args.local_dir, args.results, args.license, not args.no_open_clip)
        print(f"wrote {', '.join(names)} to {args.local_dir}; load it with --checkpoint local-dir:{args.local_dir}")
    else:
        url = push(
            checkpoint,
            args.repo_id,
            args.results,
            args.private,
            args.message,
            args.token,
            args.revision,
            args.create_pr,
            args.license,
            not args.no_open_clip,
        )
        at = f"@{args.revision}" if args.revision and not args.create_pr else ""
        print(f"pushed to {url}; load it with --checkpoint hf-hub:{args.repo_id}{at}")
    return 0

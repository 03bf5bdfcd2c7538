"""``mugstan models``: the names a config can use for its backbone, branch, head and task.

Backbones are the open_clip architectures whose towers mugstan reads (a plain ViT with a class
token, or CoCa's attentional pooler), with the pretrained tags open_clip can download for each
(``model.pretrained``), plus mugstan's own small configs (``mugstan-tiny``, ``mugstan-small``,
``mugstan-coca-tiny``: random initialisation or ``model.weights``). Branches, heads and tasks are
the choices of ``mugstan.config``, each with the comment that documents it there.
"""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all-tags", action="store_true", help="list every pretrained tag (default: the first few of each)"
    )


def readable(config: dict) -> bool:
    """Whether mugstan's backbones read an open_clip model config: a ViT with its class token (not
    timm / Hugging Face towers, SigLIP's pooling, CLIPA's global pooling) or open_clip's CoCa."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if "timm_model_name" in vision or "hf_model_name" in text or vision.get("final_ln_after_pool"):
        return False
    if "multimodal_cfg" in config:  # CoCa: one attentional pooler
        return bool(vision.get("attentional_pool")) and not vision.get("attn_pooler_queries_contrastive")
    return (
        not vision.get("attentional_pool") and vision.get("pool_type", "tok") == "tok" and not vision.get("no_ln_pre")
    )


def backbones() -> list[tuple[str, list[str]]]:
    """(name, pretrained tags) of every backbone name ``model.backbone`` takes and mugstan reads."""
    import open_clip

    from mugstan.backbones.build import list_models

    return [
        (name, open_clip.list_pretrained_tags_by_model(name))
        for name in list_models()
        if readable(open_clip.get_model_config(name) or {})
    ]


def choices(enum) -> list[tuple[str, str]]:
    """(value, doc) of each member of a ``mugstan.config`` choice."""
    from mugstan.config_cli import field_docs

    docs = field_docs()
    return [(member.value, docs.get(f"{enum.__name__}.{member.name}", "")) for member in enum]


def main(args: argparse.Namespace) -> int:
    from mugstan.config import Branch, Head, Task

    names = backbones()
    width = max(len(n) for n, _ in names) + 2
    print(
        "backbones (model.backbone; model.pretrained: one of its open_clip tags, downloaded once; "
        "or model.weights: a file)"
    )
    for name, tags in names:
        shown = tags if args.all_tags or len(tags) <= 4 else [*tags[:4], f"... ({len(tags)} tags; --all-tags)"]
        mine = "mugstan's own size: random initialisation or model.weights" if name.startswith("mugstan") else "no tags"
        print(f"  {name:<{width}}{', '.join(shown) if shown else mine}")
    for title, key, enum in (
        ("branches", "model.branch", Branch),
        ("heads", "model.head", Head),
        ("tasks", "model.task", Task),
    ):
        print(f"{title} ({key})")
        for value, doc in choices(enum):
            print(f"  {value:<{width}}{doc}")
    print(
        "STAN = branch stan + head mean; Mug-STAN = branch stan + head mug; CLIP4Clip = branch none + head meanP or "
        "seqTransf; CLIP2Video = branch none + head tdb_tab (docs/models.md)"
    )
    return 0

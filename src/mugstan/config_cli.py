"""``mugstan config``: the configs that ship with mugstan, and what every key means.

    mugstan config list                                  # every packaged config, by name
    mugstan config show msrvtt/stan_vitb32 [key=value]   # the resolved config, each key with its doc

A packaged config is accepted by name wherever a config file is (``mugstan train
msrvtt/stan_vitb32 data.root=/data/msrvtt``), from any folder; a local YAML file keeps working.

``show`` prints the loaded config as YAML: every key of the schema with its value after the
overrides, and a one-line comment taken from the comment that documents the field in
``mugstan/config.py`` (``field_docs``), so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    sub.add_parser("list", help="list the packaged configs by name", description="List the configs that ship with "
                   "mugstan; give a name where a config file goes: mugstan train msrvtt/stan_vitb32 data.root=...")
    show = sub.add_parser(
        "show",
        help="the resolved config, every key with its one-line doc",
        description="Print a config (a file or a packaged name) after the overrides, every key with a "
        "one-line comment saying what it means.",
    )
    show.add_argument("config", help="experiment YAML or packaged config name (msrvtt/stan_vitb32)")
    show.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-6")


def one_sentence(text: str, most: int = 120) -> str:
    """The first sentence of a comment block, at most ``most`` characters."""
    text = " ".join(text.split())
    first = re.split(r"(?<=[.;])\s+(?=[A-Z(])", text, maxsplit=1)[0]
    return first if len(first) <= most else first[: most - 3].rstrip() + "..."


def field_docs() -> dict[str, str]:
    """{"ClassName.name": one-line doc} for every field and enum member of ``mugstan/config.py``: the
    comment on the field's line, else the comment block just above it."""
    import ast
    import io
    import tokenize

    import mugstan.config

    source = Path(mugstan.config.__file__).read_text()
    comments = {
        t.start[0]: t.string.lstrip("#").strip()
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    docs = {}
    for cls in (node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)):
        for node in cls.body:
            target = (
                node.target
                if isinstance(node, ast.AnnAssign)
                else node.targets[0]
                if isinstance(node, ast.Assign)
                else None
            )
            if not isinstance(target, ast.Name):
                continue
            doc = comments.get(node.end_lineno, "")
            row = node.lineno - 1
            while not doc and row in comments and lines[row - 1].lstrip().startswith("#"):
                block = []
                while row in comments and lines[row - 1].lstrip().startswith("#"):
                    block.insert(0, comments[row])
                    row -= 1
                doc = " ".join(block)
            docs[f"{cls.name}.{target.id}"] = one_sentence(doc)
    return docs


def key_docs() -> dict[str, str]:
    """{"model.stan.depth": doc, ...}: every key of an experiment config with its one-line doc (a
    section's is its class docstring's first sentence; a choice's ends with its values)."""
    from enum import Enum

    from mugstan.config import ExperimentConfig

    docs, out = field_docs(), {}

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind  # Optional[X] -> X
            doc = docs.get(f"{cls.__name__}.{f.name}", "")
            if dataclasses.is_dataclass(kind):
                doc = doc or one_sentence(kind.__doc__ or "")
                walk(kind, f"{prefix}{f.name}.")
            elif isinstance(kind, type) and issubclass(kind, Enum):
                doc = doc or one_sentence(kind.__doc__ or "")
                if not all(m.value in doc for m in kind):  # the values, unless the comment names them all
                    doc = f"{doc} ({' | '.join(m.value for m in kind)})".lstrip()
            out[prefix + f.name] = doc

    walk(ExperimentConfig, "")
    return out


def _flow(value) -> str:
    """A value as one line of YAML (lists and mappings in flow style)."""
    import yaml

    return yaml.safe_dump([value], default_flow_style=True, width=10**9, sort_keys=False).strip()[1:-1]


def show(cfg) -> str:
    """The config as YAML, every key followed by ``# its doc`` (nested sections indented by 2)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    docs = key_docs()
    rows: list[tuple[str, str]] = []

    def walk(mapping: dict, prefix: str, indent: int) -> None:
        for key, value in mapping.items():
            path = prefix + key
            nested = isinstance(value, dict) and any(k.startswith(path + ".") for k in docs)
            rows.append((" " * indent + f"{key}:" + ("" if nested else f" {_flow(value)}"), docs.get(path, "")))
            if nested:
                walk(value, path + ".", indent + 2)

    walk(data, "", 0)
    width = min(60, max(len(text) for text, _ in rows)) + 2
    return (
        "\n".join(
            f"{text:<{width}}# {doc}" if doc and len(text) <= width - 2 else f"{text}  # {doc}" if doc else text
            for text, doc in rows
        )
        + "\n"
    )


def main(args: argparse.Namespace) -> int:
    from mugstan.config import load_config, packaged_configs

    if args.config_command == "list":
        for name in packaged_configs():
            print(name)
        return 0
    print(show(load_config(args.config, args.overrides, check_files=False)), end="")
    return 0

"""The ``mugstan`` command line.

Each command lives in the module that implements it; that module defines
``configure_parser(parser)`` and ``main(args) -> int``. Only the chosen command's module is
imported, so ``mugstan --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Idle OpenMP threads sleep instead of spinning. Training and evaluation share the cores with
# DataLoader workers that decode video; spinning threads there made torch 10-40x slower in our
# measurements on a 2-core machine. Set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("mugstan.demo", "run the built-in synthetic benchmark end to end (no downloads)"),
    "train": ("mugstan.engine.train", "train a model from a YAML config"),
    "eval": ("mugstan.engine.evaluate", "evaluate a checkpoint on a config's test split"),
    "embed": ("mugstan.engine.embed", "write video or text embeddings to a file"),
    "convert": ("mugstan.convert", "convert CLIP / STAN / CLIP2Video weights to mugstan's layout"),
    "data": ("mugstan.data.cli", "dataset tools: check, compress, synth"),
    "bench": ("mugstan.bench", "benchmarks: the full synthetic comparison"),
    "index": ("mugstan.search.index", "embed a folder of videos into a search index"),
    "search": ("mugstan.search.query", "search an index by text"),
    "serve": ("mugstan.search.server", "serve a search page for an index"),
    "push": ("mugstan.hub", "upload a checkpoint with a model card to the Hugging Face Hub"),
    "chat": ("mugstan.chat.cli", "ask a video chat model (LLaVA + the video encoder) about a video"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugstan", description="CLIP-to-video models: STAN, Mug-STAN, CLIP2Video, CLIP4Clip.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).configure_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after flags: `mugstan train cfg.yaml --resume train.lr=1e-6`
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        build_parser().print_help()
        return 2
    return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

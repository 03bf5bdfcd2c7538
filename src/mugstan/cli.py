"""The ``mugstan`` command line.

Each command lives in the module that implements it; that module defines
``configure_parser(parser)`` and ``main(args) -> int``. Only the chosen command's module is
imported, so ``mugstan --help`` is instant.

Errors: a user error (``mugstan.errors.UserError`` and its kin: a config value, an argument, a
file, a checkpoint, an index, an annotation file, a video; or the operating system refusing a
named file) is printed as one line ``error: ...`` and the exit status is 2, without a traceback.
``--debug`` (anywhere on the line) shows the traceback instead. Anything else is a bug and keeps
its traceback.

Messages: library code reports progress through ``logging`` (the ``mugstan.*`` loggers, silent
unless configured); ``main`` shows them as they come, the bare message: INFO on stdout, where a
command's results also go (``mugstan train > train.log`` keeps the run's log, without the progress
bars, which are on stderr), WARNING and above on stderr, beside the ``error:`` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from mugstan.errors import ArgumentError, UserError, one_line

# Idle OpenMP threads spin for a bounded time (GOMP_SPINCOUNT=4000: microseconds) before they
# sleep. A CPU training step is thousands of small ops, which then find the threads awake: 1.50x
# the steps/s of OMP_WAIT_POLICY=PASSIVE (threads sleep at once) for the demo's STAN alone on 2
# cores. When two jobs share the cores it costs 0.71x PASSIVE's speed; longer spins cost far more
# (0.36x at 20000; libgomp's default, 300000, ran 22x slower than PASSIVE beside another job).
# benchmarks/openmp_wait.py. Set OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself to choose otherwise.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "4000")

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("mugstan.demo", "run the built-in synthetic benchmark end to end (no downloads)"),
    "train": ("mugstan.engine.train", "train a model from a YAML config"),
    "config": (
        "mugstan.config_cli",
        "the configs that ship with mugstan: list them, show one with every key explained",
    ),
    "models": (
        "mugstan.catalog",
        "the backbones (with their pretrained tags), branches, heads and tasks a config can name",
    ),
    "eval": ("mugstan.engine.evaluate", "evaluate a checkpoint on a config's test split"),
    "embed": ("mugstan.engine.embed", "write video or text embeddings to a file"),
    "convert": ("mugstan.convert", "convert CLIP / STAN / CLIP2Video weights to mugstan's layout"),
    "data": ("mugstan.data.cli", "dataset tools: check, compress, synth"),
    "bench": ("mugstan.bench", "benchmarks: the full synthetic comparison"),
    "index": ("mugstan.search.index", "embed a folder of videos into a search index"),
    "search": ("mugstan.search.query", "search an index by text"),
    "serve": ("mugstan.search.server", "serve a search page for an index"),
    "caption": ("mugstan.caption", "caption videos with a CoCa model's decoder (greedy or beam search)"),
    "push": ("mugstan.hub", "upload a checkpoint with a model card to the Hugging Face Hub"),
    "chat": ("mugstan.chat.cli", "ask a video chat model (LLaVA + the video encoder) about a video"),
}


class ConsoleHandler(logging.Handler):
    """The bare message of each record: below WARNING to ``sys.stdout``, WARNING and above to
    ``sys.stderr``, the streams of the moment (a caller that swaps them, as pytest does, gets them).
    A reader that went away (``BrokenPipeError``) propagates, as it does from ``print``."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except (BrokenPipeError, RecursionError):
            raise
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def console_logging():
    """While a command runs, show the ``mugstan`` loggers' INFO and above on the console
    (``ConsoleHandler``) and only there: not also through the root logger, which a library's
    ``logging.warning`` (open_clip's) equips with a handler of its own, printing every line twice.
    Nested calls add no second handler; leaving restores the logger as it was."""
    log = logging.getLogger("mugstan")
    if any(isinstance(h, ConsoleHandler) for h in log.handlers):
        yield
        return
    handler, level, propagate = ConsoleHandler(), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


class Parser(argparse.ArgumentParser):
    """argparse with its errors raised as ``ArgumentError`` (one line, exit 2, like every user error)."""

    def error(self, message: str):
        raise ArgumentError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog="mugstan", description="CLIP-to-video models: STAN, Mug-STAN, CLIP2Video, CLIP4Clip.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).configure_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        with console_logging():
            return run(argv)
    except UserError as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
    except BrokenPipeError:  # the reader of our output went away (`mugstan config list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    except OSError as err:  # the system refused a named file: permissions, a folder where a file was meant, a full disk
        if debug or err.filename is None:
            raise
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else err.filename
        print(f"error: {where}: {err.strerror or one_line(err)}", file=sys.stderr)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return 2


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; errors propagate (``main`` reports them)."""
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
        build_parser().print_help(sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

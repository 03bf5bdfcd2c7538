"""``mugstan config``: the configs that ship with mugstan.

    mugstan config list                  # every packaged config, by name (msrvtt/stan_vitb32, ...)

A packaged config is accepted by name wherever a config file is (``mugstan train
msrvtt/stan_vitb32 data.root=/data/msrvtt``), from any folder; a local YAML file keeps working.
"""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    sub.add_parser("list", help="list the packaged configs by name", description="List the configs that ship with "
                   "mugstan; give a name where a config file goes: mugstan train msrvtt/stan_vitb32 data.root=...")


def main(args: argparse.Namespace) -> int:
    from mugstan.config import packaged_configs

    for name in packaged_configs():
        print(name)
    return 0

"""``python -m node``: the Raspberry Pi daemon's command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tinyml_core.cli import (
    add_broker_arguments,
    add_logging_arguments,
    broker_overrides,
    print_settings,
    run_main,
    setup_logging,
)
from tinyml_core.config import load_settings

from .settings import NodeSettings

DEFAULT_CONFIG = os.environ.get("TINYML_NODE_CONFIG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m node",
        description="Sensor node: publishes temperature/humidity readings and audio clips "
                    "over MQTT (see docs/protocol.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser("config", help="print the effective settings and exit",
                               description="Load the settings file, apply TINYML_BROKER_* "
                                           "variables and flags, and print every key.")
    add_broker_arguments(show, DEFAULT_CONFIG)
    show.add_argument("--node-id", help="node id (overrides [node] id)")
    add_logging_arguments(show)
    return parser


def load(args: argparse.Namespace) -> NodeSettings:
    overrides = broker_overrides(args) | {"node.id": args.node_id}
    return load_settings(NodeSettings, args.config, environment=os.environ, overrides=overrides)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    settings = load(args)
    if args.command == "config":
        print_settings(settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

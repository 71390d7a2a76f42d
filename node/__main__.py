"""``python -m node``: the Raspberry Pi daemon's command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tinyml_core.cli import (
    add_config_command,
    load_from_args,
    print_settings,
    run_main,
    setup_logging,
)

from .settings import NodeSettings

DEFAULT_CONFIG = os.environ.get("TINYML_NODE_CONFIG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m node",
        description="Sensor node: publishes temperature/humidity readings and audio clips "
                    "over MQTT (see docs/protocol.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = add_config_command(commands, DEFAULT_CONFIG)
    show.add_argument("--node-id", help="node id (overrides [node] id)")
    return parser


def load(args: argparse.Namespace) -> NodeSettings:
    return load_from_args(NodeSettings, args, {"node.id": args.node_id})


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

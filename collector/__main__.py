"""``python -m collector``: the inference worker's command line."""

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

from .settings import CollectorSettings

DEFAULT_CONFIG = os.environ.get("TINYML_COLLECTOR_CONFIG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m collector",
        description="Inference worker: turns sensors/# into predictions/# (see "
                    "docs/protocol.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = add_config_command(commands, DEFAULT_CONFIG)
    show.add_argument("--models", help="models folder (overrides [collector] models_dir)")
    return parser


def load(args: argparse.Namespace) -> CollectorSettings:
    return load_from_args(CollectorSettings, args, {"collector.models_dir": args.models})


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

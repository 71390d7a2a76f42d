"""``python -m dashboard``: the live web dashboard's command line."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence

from tinyml_core.cli import (
    add_broker_arguments,
    add_config_command,
    add_logging_arguments,
    host_port,
    load_from_args,
    print_settings,
    run_main,
    setup_logging,
    stop_on_signals,
    stop_on_thread_death,
)
from tinyml_core.errors import ConfigError

from .settings import DashboardSettings

DEFAULT_CONFIG = os.environ.get("TINYML_DASHBOARD_CONFIG")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard",
        description="Live web dashboard: every node's readings, forecasts, keywords and errors "
                    "in a browser (it subscribes to the broker and never publishes).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = add_config_command(commands, DEFAULT_CONFIG)
    run = commands.add_parser(
        "run", help="serve the dashboard until stopped",
        description="Subscribe to status/+, sensors/+/climate, predictions/# and errors/+ and "
                    "serve the pages, /api/nodes and /events (Server-Sent Events).")
    add_broker_arguments(run, DEFAULT_CONFIG)
    run.add_argument("--listen", metavar="HOST:PORT",
                     help="where to serve (default 127.0.0.1:8080; another address must be "
                          "given on purpose, and then wants --username/--password in the "
                          "config)")
    run.add_argument("--duration", type=float, metavar="SECONDS",
                     help="stop after this long (default: run until stopped)")
    add_logging_arguments(run)
    for command in (show, run):
        command.add_argument("--dashboard-id", help="MQTT client id (overrides [dashboard] id)")
    return parser


def load(args: argparse.Namespace) -> DashboardSettings:
    overrides = {"dashboard.listen": getattr(args, "listen", None),
                 "dashboard.id": getattr(args, "dashboard_id", None),
                 "dashboard.password": os.environ.get("TINYML_DASHBOARD_PASSWORD")}
    return load_from_args(DashboardSettings, args, overrides)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    settings = load(args)
    if args.command == "config":
        print_settings(settings)
        return 0
    from .server import Dashboard

    options = settings.dashboard
    try:
        host, _ = host_port(options.listen, any_port=True)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(str(error), key="dashboard.listen") from None
    if host not in LOOPBACK and not options.username:
        print(f"warning: serving on {options.listen} without a login: anyone who can reach it "
              "sees every node (set [dashboard] username and password)", file=sys.stderr)
    try:
        dashboard = Dashboard(settings)
    except OSError as error:
        raise ConfigError(f"cannot listen on {options.listen}: {error.strerror or error}",
                          key="dashboard.listen") from None
    stop = threading.Event()
    stop_on_signals(stop.set)
    watch = stop_on_thread_death(stop.set)
    dashboard.start()
    print(f"dashboard: {dashboard.address}", flush=True)
    try:
        stop.wait(args.duration)
    finally:
        dashboard.close()
    return watch.exit_status()


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

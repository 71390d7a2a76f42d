"""Command-line plumbing shared by ``python -m node``, ``python -m collector`` and the demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import describe_settings, load_settings
from .errors import TinyMLError

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def host_port(text: str, any_port: bool = False) -> tuple[str, int]:
    """argparse type for ``HOST:PORT`` (``[::1]:1883`` for IPv6); ``any_port``: a port to
    listen on, where 0 means a free one."""
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or \
            not (0 if any_port else 1) <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. localhost:1883)")
    return host.strip("[]"), int(port)


def add_broker_arguments(parser: argparse.ArgumentParser, default_config: str | None) -> None:
    """--config and the flags that override the [broker] section."""
    parser.add_argument("--config", type=Path, default=default_config,
                        help=f"TOML settings file (default: {default_config or 'none'})")
    group = parser.add_argument_group("broker (overrides the file and TINYML_BROKER_*)")
    group.add_argument("--broker", type=host_port, metavar="HOST:PORT", help="broker address")
    group.add_argument("--username", help="MQTT user name")
    group.add_argument("--password", help="MQTT password (visible to `ps`: prefer the "
                                          "TINYML_BROKER_PASSWORD environment variable)")
    group.add_argument("--ca-file", help="CA certificate (PEM); enables TLS")
    group.add_argument("--cert-file", help="client certificate (PEM)")
    group.add_argument("--key-file", help="client certificate's private key (PEM)")


def broker_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted-key overrides from the flags of :func:`add_broker_arguments` (None: not given,
    also for commands that do not take those flags)."""
    def flag(name: str) -> Any:
        return getattr(args, name, None)

    host, port = flag("broker") or (None, None)
    return {
        "broker.host": host,
        "broker.port": port,
        "broker.username": flag("username"),
        "broker.password": flag("password"),
        "broker.tls.ca_file": flag("ca_file"),
        "broker.tls.cert_file": flag("cert_file"),
        "broker.tls.key_file": flag("key_file"),
    }


def add_config_command(commands: Any, default_config: str | None) -> argparse.ArgumentParser:
    """The ``config`` subcommand every daemon has: print the effective settings and exit."""
    show: argparse.ArgumentParser = commands.add_parser(
        "config", help="print the effective settings and exit",
        description="Load the settings file, apply TINYML_BROKER_* variables and flags, "
                    "and print every key with its meaning.",
    )
    add_broker_arguments(show, default_config)
    add_logging_arguments(show)
    return show


def load_from_args(schema: type[T], args: argparse.Namespace,
                   extra_overrides: dict[str, Any] | None = None) -> T:
    """Settings from ``--config``, the environment and the broker flags (plus ``extra``)."""
    overrides = broker_overrides(args) | (extra_overrides or {})
    return load_settings(schema, args.config, environment=os.environ, overrides=overrides)


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.INFO + 10 * (args.quiet - args.verbose)
    logging.basicConfig(level=max(logging.DEBUG, level), format=LOG_FORMAT, stream=sys.stderr)


def print_settings(settings: object) -> None:
    """The effective settings as a table: key, value, what it means."""
    rows = describe_settings(settings)
    width = max(len(key) for key, _, _ in rows)
    value_width = min(40, max(len(value) for _, value, _ in rows))
    for key, value, help_text in rows:
        print(f"{key:<{width}}  {value:<{value_width}}  # {help_text}")


def stop_on_signals(stop: Callable[[], object], doing: str = "stopping") -> None:
    """SIGINT and SIGTERM (Ctrl-C, systemd, docker stop) log a line and call ``stop``."""
    def handler(signum: int, frame: object) -> None:
        logging.getLogger("tinyml").info("%s received, %s", signal.Signals(signum).name, doing)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class ThreadDeathWatch:
    """Turns an unexpected exception in any thread into a stop of the whole process.

    A daemon whose forwarding or network thread died while its main loop goes on looks alive
    to systemd and sends nothing. Instead the exception is logged, ``stop`` is called, and the
    command exits with status 1, so the service manager restarts it (the node's spool and the
    broker's persistent session keep the data meanwhile).
    """

    def __init__(self, stop: Callable[[], object]) -> None:
        self._stop = stop
        self.failure: str | None = None

    def __call__(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "unknown"
        self.failure = f"thread {name!r} died: {args.exc_type.__name__}: {args.exc_value}"
        logging.getLogger("tinyml").critical(
            "%s; stopping the process (exit status 1) so that it is restarted", self.failure,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]
        self._stop()

    def exit_status(self) -> int:
        """0, or 1 after a thread died (also printed as the command's last line)."""
        if self.failure is None:
            return 0
        print(f"error: {self.failure}", file=sys.stderr)
        return 1


def stop_on_thread_death(stop: Callable[[], object]) -> ThreadDeathWatch:
    """Install a :class:`ThreadDeathWatch` for every thread of the process."""
    watch = ThreadDeathWatch(stop)
    threading.excepthook = watch
    return watch


def run_main(main: Callable[[Sequence[str] | None], int],
             argv: Sequence[str] | None = None) -> int:
    """Run a command's main: our errors become one readable line and exit status 1."""
    try:
        return main(argv)
    except TinyMLError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

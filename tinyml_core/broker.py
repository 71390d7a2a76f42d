"""Private brokers on the loopback interface, for tests, benchmarks and the demo.

:class:`LocalMosquitto` runs the real ``mosquitto`` binary with a generated config on a
free 127.0.0.1 port (persistence on), and can be stopped, killed and restarted on the same
port and data directory. :class:`EmbeddedBroker` is the fallback for machines without
Mosquitto: amqtt (pure Python, MQTT 3.1.1 only) in a background thread.
Neither is meant for production: run a real, configured Mosquitto there (config/mosquitto/).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .errors import MqttError

log = logging.getLogger("tinyml.broker")

LOOPBACK = "127.0.0.1"
# What config/mosquitto/tinyml.conf changes from Mosquitto's own defaults (which Debian and Home
# Assistant's add-on keep: 1000 queued messages per client, Nagle's algorithm on).
PROJECT_SETTINGS = "max_queued_messages 100000\nset_tcp_nodelay true\n"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.01)
    return False


def mosquitto_binary() -> str | None:
    """Path of the mosquitto executable (also looked for in /usr/sbin, where Debian puts it)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class LocalMosquitto:
    """A private Mosquitto on 127.0.0.1 with its own config and persistence directory.

    ``extra_config`` lines are appended to the generated ``mosquitto.conf`` (for ACLs,
    password files, TLS listeners...); ``stock`` leaves out the project's queue and Nagle
    settings (config/mosquitto/tinyml.conf), as a broker users already run has them.
    ``port`` stays the same across restarts, so clients
    reconnect to the same address.
    """

    def __init__(self, directory: Path | None = None, *, port: int | None = None,
                 extra_config: str = "", listener: str | None = None,
                 stock: bool = False) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise MqttError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = binary
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="tinyml-mosquitto-"))
        self.host = LOOPBACK
        self.port = port or free_port()
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        listener_block = listener or f"listener {self.port} {self.host}\nallow_anonymous true\n"
        # Started as root, Mosquitto drops to the 'mosquitto' user, which cannot write here.
        run_as = "user root\n" if os.geteuid() == 0 else ""
        self.config_path.write_text(
            f"{run_as}"
            "per_listener_settings false\n"
            f"{listener_block}"
            "persistence true\n"
            f"persistence_location {self.directory / 'data'}/\n"
            "autosave_interval 1\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{'' if stock else PROJECT_SETTINGS}"
            f"{extra_config}\n"
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        if self.running:
            return self
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        if not wait_for_port(self.host, self.port, timeout):
            output = self.log_path.read_text(errors="replace")[-2000:]
            self.kill()
            raise MqttError(f"mosquitto did not start on {self.address}:\n{output}")
        log.debug("mosquitto %s running on %s", self._process.pid, self.address)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: Mosquitto saves its persistence file on SIGTERM."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password file and ACL (and drops revoked clients)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as a crash or power cut would do."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


class EmbeddedBroker:
    """amqtt in a daemon thread on 127.0.0.1: MQTT 3.1.1 only, for when no Mosquitto exists."""

    def __init__(self, port: int | None = None) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        try:
            from amqtt.broker import Broker as AmqttBroker
        except ImportError as exc:
            raise MqttError(
                "no mosquitto binary and no amqtt: install one "
                "(apt-get install mosquitto, or pip install '.[demo]')"
            ) from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

        async def serve() -> None:
            # amqtt's Broker must be created inside a running event loop.
            self._broker = AmqttBroker(config)
            await self._broker.start()
            self._started.set()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
                self._loop.run_forever()
            except BaseException as exc:  # reported to the starting thread below
                self._error = exc
                self._started.set()

        self._thread = threading.Thread(target=run, name="embedded-broker", daemon=True)
        self._thread.start()
        # No probe connection here: amqtt logs an error for every client that sends nothing.
        if not self._started.wait(timeout) or self._error is not None:
            raise MqttError(f"embedded broker did not start on {self.address}: {self._error}")
        return self

    def stop(self) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            future.result(timeout=10)
        except Exception as exc:  # shutting down anyway
            log.debug("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_private_broker(
    directory: Path | None = None, *, embedded: bool = False
) -> LocalMosquitto | EmbeddedBroker:
    """A private Mosquitto when the binary exists (and ``embedded`` is false), else amqtt."""
    if not embedded and mosquitto_binary() is not None:
        return LocalMosquitto(directory).start()
    log.info("mosquitto not found; starting the embedded amqtt broker (MQTT 3.1.1)")
    return EmbeddedBroker().start()

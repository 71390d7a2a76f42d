"""``python -m collector run`` in its own process, for tests that kill it or watch its memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO_ROOT, broker_config
from tinyml_core.broker import LocalMosquitto
from tinyml_core.mqtt import MqttClient

DEFAULT_ID = "collector-1"


def start_collector(broker: LocalMosquitto, log: Path) -> subprocess.Popen[bytes]:
    """Start the collector with the shipped models; its log goes to ``log`` (a pipe that nobody
    reads would fill up and block it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with log.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "--broker", broker.address, "--models",
             str(REPO_ROOT / "models"), "-q"],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def wait_online(broker: LocalMosquitto, client_id: str = DEFAULT_ID) -> None:
    """Until the collector has said "online" (and had time to subscribe)."""
    watcher = MqttClient(broker_config(broker), "status-watcher",
                         publish_availability=False).connect()
    watcher.subscribe(f"status/{client_id}")
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            inbound = watcher.receive(timeout=0.5)
            if inbound is not None and inbound.payload == b"online":
                time.sleep(1.0)  # "online" goes out on connect, just before the subscriptions
                return
        raise AssertionError(f"{client_id} did not come online")
    finally:
        watcher.close()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields

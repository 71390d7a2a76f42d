"""The collector for tests: a Worker in a thread of the test, or ``python -m collector run`` in
its own process (for tests that kill it or watch its memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from collector.inference import Inference
from collector.settings import CollectorOptions, CollectorSettings
from collector.worker import Worker
from tests.conftest import REPO_ROOT, broker_config
from tinyml_core.broker import LocalMosquitto
from tinyml_core.config import BrokerConfig
from tinyml_core.mqtt import MqttClient

MODELS = REPO_ROOT / "models"


def start_worker(mosquitto: LocalMosquitto, client_id: str, share: str = "",
                 forecasts: tuple[str, ...] = ("forecast_a",), partition: str = "1/1",
                 keyword_model: str = "kws_c", config: BrokerConfig | None = None,
                 state_path: str = "", rate_limit_per_s: float = 0.0,
                 ha_discovery: bool = False, enrollment_path: str = ""
                 ) -> tuple[Worker, threading.Thread]:
    """A Worker running in a thread (``keyword_model=""``: readings only); ``config`` for
    credentials or TLS; no saved windows, no enrollments and no rate limit unless asked for."""
    settings = CollectorSettings(
        broker=config or broker_config(mosquitto),
        collector=CollectorOptions(id=client_id, models_dir=str(MODELS), share_group=share,
                                   forecast_models=forecasts, partition=partition,
                                   keyword_model=keyword_model, state_path=state_path,
                                   rate_limit_per_s=rate_limit_per_s,
                                   ha_discovery=ha_discovery,
                                   enrollment_path=enrollment_path))
    running = Worker(settings, Inference.from_options(settings.collector))
    running.start()
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    return running, thread


def stop_worker(running: Worker, thread: threading.Thread) -> None:
    running.stop()
    thread.join(timeout=5)
    running.close()


def start_collector(broker: LocalMosquitto, log: Path,
                    *extra_args: str) -> subprocess.Popen[bytes]:
    """Start the collector with the shipped models and its defaults (windows saved beside
    ``log``); its log goes to ``log`` (a pipe that nobody reads would fill up and block it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with log.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "--broker", broker.address, "--models",
             str(MODELS), "--state", str(log.with_suffix(".windows.json")), "-q", *extra_args],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def wait_online(broker: LocalMosquitto) -> None:
    """Until the collector answers: a probe payload on a sensor topic gets its error record
    (a retained "online" may still be a killed process's, until the broker notices)."""
    watcher = MqttClient(broker_config(broker), "readiness-probe",
                         publish_availability=False).connect()
    watcher.subscribe("errors/readiness-probe")
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            watcher.publish("sensors/readiness-probe/climate", b"are you there?")
            if watcher.receive(timeout=0.5) is not None:
                return
        raise AssertionError("the collector did not answer within 30 s")
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

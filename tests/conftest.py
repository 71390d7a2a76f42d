"""Shared fixtures: a real Mosquitto per test, clients connected to it, paths to data.

No broker is mocked anywhere: ``mosquitto`` starts the real binary on a free loopback port
with a temporary config (persistence on). Without the binary those tests are skipped, unless
``TINYML_REQUIRE_MOSQUITTO=1`` (as in CI), where a missing broker is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tinyml_core.broker import LocalMosquitto, mosquitto_binary
from tinyml_core.config import BrokerConfig
from tinyml_core.mqtt import MqttClient

if TYPE_CHECKING:
    from dashboard.server import Dashboard

REPO_ROOT = Path(__file__).resolve().parent.parent
# The datasets of ../shared/data; tests that need them skip on a user's clone.
SHARED_DATA = Path(os.environ.get("TINYML_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require_mosquitto() -> None:
    if mosquitto_binary() is None:
        message = "mosquitto is not installed (apt-get install mosquitto)"
        if os.environ.get("TINYML_REQUIRE_MOSQUITTO") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """A running private Mosquitto; ``.stop()``, ``.kill()`` and ``.start()`` keep its port."""
    _require_mosquitto()
    broker = LocalMosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., LocalMosquitto]]:
    """Start Mosquitto with extra config lines or a custom listener block."""
    _require_mosquitto()
    started: list[LocalMosquitto] = []

    def start(**kwargs: object) -> LocalMosquitto:
        broker = LocalMosquitto(tmp_path / f"mosquitto-{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


def broker_config(broker: LocalMosquitto, **changes: object) -> BrokerConfig:
    """Client settings for a test broker: short timeouts so failures show quickly."""
    settings: dict[str, object] = {
        "host": broker.host, "port": broker.port, "connect_timeout_s": 5.0,
        "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5,
    }
    settings.update(changes)
    return BrokerConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def connect(mosquitto: LocalMosquitto) -> Iterator[Callable[..., MqttClient]]:
    """Make connected clients to the test broker; all are closed after the test."""
    clients: list[MqttClient] = []

    def make(client_id: str, **kwargs: object) -> MqttClient:
        config = kwargs.pop("config", None) or broker_config(mosquitto)
        client = MqttClient(config, client_id, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client.connect()

    yield make
    for client in clients:
        client.close(timeout=1.0)


@pytest.fixture
def dashboard(mosquitto: LocalMosquitto) -> Iterator[Dashboard]:
    """The web dashboard on a free loopback port, subscribed to the test broker."""
    from dashboard.server import Dashboard
    from dashboard.settings import DashboardOptions, DashboardSettings

    running = Dashboard(DashboardSettings(broker=broker_config(mosquitto),
                                          dashboard=DashboardOptions(listen="127.0.0.1:0",
                                                                     state_path="")))
    running.start()
    yield running
    running.close()

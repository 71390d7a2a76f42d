"""The dashboard against the real Mosquitto: what a page and the API see, live updates,
login, and that it never publishes. (A headless-browser test is still to come.)"""

from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dashboard.server import Dashboard
from dashboard.settings import DashboardOptions, DashboardSettings
from tests.conftest import broker_config
from tests.waiting import wait_for
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import ClimateReading, ErrorRecord, KeywordResult
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import PredictionKind, climate_topic, errors_topic, prediction_topic

pytestmark = pytest.mark.broker
T0 = 1_729_299_600.0


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_api_shows_a_node_its_steps_and_its_error_log(
        dashboard: Dashboard, connect: Callable[..., MqttClient]) -> None:
    node = connect("pi-kitchen")  # publishes its retained 'online'
    for minute in range(0, 30, 5):
        reading = ClimateReading("pi-kitchen", T0 + 60 * minute + 30, minute, 21.0, 48.0)
        assert node.publish(climate_topic("pi-kitchen"), reading.encode()).wait(5)
    hostile = "sensors/<script>alert(1)</script>/climate"
    record = ErrorRecord("pi-kitchen", T0, hostile, "not JSON", 3, "x<y")
    assert node.publish(errors_topic("pi-kitchen"), record.encode()).wait(5)
    assert wait_for(lambda: dashboard.history.node("pi-kitchen") is not None
                    and len(dashboard.history.node("pi-kitchen")["errors"]) == 1)  # type: ignore[index]
    status, headers, body = get(dashboard.address + "api/nodes")
    overview = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    [summary] = overview["nodes"]
    assert summary["node_id"] == "pi-kitchen" and summary["status"] == "online"
    assert summary["reading"]["temperature"] == 21.0 and summary["error_count"] == 1
    status, _, body = get(dashboard.address + "api/nodes/pi-kitchen")
    detail = json.loads(body)
    assert [step[0] for step in detail["steps"]] == [T0 + 600, T0 + 1200, T0 + 1800]
    assert detail["errors"][0]["topic"] == hostile  # data; the page sets it as text
    assert get(dashboard.address + "api/nodes/nobody")[0] == 404


def test_the_page_is_served_without_inline_script_and_with_its_own_files(
        dashboard: Dashboard) -> None:
    for path in ("", "node/pi-kitchen"):
        status, headers, body = get(dashboard.address + path)
        assert status == 200 and b'<script src="/static/app.js"' in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert b"http://" not in body and b"https://" not in body  # no CDN
    assert get(dashboard.address + "static/app.js")[1]["Content-Type"].startswith(
        "text/javascript")
    assert b"textContent" in get(dashboard.address + "static/app.js")[2]
    assert b"innerHTML" not in get(dashboard.address + "static/app.js")[2]
    assert get(dashboard.address + "static/../settings.py")[0] == 404


def test_a_keyword_arrives_live_on_the_event_stream(
        dashboard: Dashboard, connect: Callable[..., MqttClient]) -> None:
    events: list[dict[str, object]] = []
    port = int(dashboard.address.rsplit(":", 1)[1].strip("/"))

    def listen() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            buffer = b""
            while not events:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                buffer += chunk
                for line in buffer.split(b"\n"):
                    if line.startswith(b"data: "):
                        events.append(json.loads(line[6:]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert wait_for(lambda: len(dashboard.events) == 1)
    collector = connect("collector-1")
    result = KeywordResult("pi-kitchen", "kws_b", "1+abc", T0, 1.0, 0.1, "yes",
                           {"yes": 0.9, "no": 0.1})
    assert collector.publish(prediction_topic("pi-kitchen", PredictionKind.KEYWORD),
                             result.encode()).wait(5)
    thread.join(timeout=10)
    assert events and events[0]["kind"] in ("status", "keyword")
    assert wait_for(lambda: dashboard.history.node("pi-kitchen") is not None)


def test_basic_auth_when_configured(mosquitto: LocalMosquitto) -> None:
    running = Dashboard(DashboardSettings(
        broker=broker_config(mosquitto),
        dashboard=DashboardOptions(listen="127.0.0.1:0", username="ops", password="s3cret",
                                   state_path="")))
    running.start()
    try:
        status, headers, _ = get(running.address + "api/nodes")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        wrong = base64.b64encode(b"ops:guess").decode()
        assert get(running.address + "api/nodes", {"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(b"ops:s3cret").decode()
        assert get(running.address + "api/nodes", {"Authorization": f"Basic {right}"})[0] == 200
    finally:
        running.close()


def test_the_dashboard_never_publishes(dashboard: Dashboard,
                                       connect: Callable[..., MqttClient]) -> None:
    spy = connect("spy", publish_availability=False)
    spy.subscribe("#")
    while spy.receive(timeout=0.5) is not None:
        pass  # retained messages of the fixture's clients
    dashboard.close()  # a client that announced itself would say 'offline' now
    assert spy.receive(timeout=1.0) is None


def test_a_restarted_dashboard_shows_the_history_it_had(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    state = tmp_path / "history.json"
    settings = DashboardSettings(broker=broker_config(mosquitto), dashboard=DashboardOptions(
        listen="127.0.0.1:0", state_path=str(state), state_save_s=0.2))
    first = Dashboard(settings)
    first.start()
    node = connect("pi-porch")
    for minute in range(0, 30, 5):
        reading = ClimateReading("pi-porch", T0 + 60 * minute + 30, minute, 12.0, 80.0)
        assert node.publish(climate_topic("pi-porch"), reading.encode()).wait(5)
    try:
        # Saved while running (a crash would keep this much), not only on the stop below.
        assert wait_for(lambda: state.exists() and "pi-porch" in state.read_text()
                        and len(json.loads(state.read_text())["nodes"][0]["steps"]) == 3)
    finally:
        first.close()
    second = Dashboard(settings)  # loads the file before it connects
    second.start()
    try:
        status, _, body = get(second.address + "api/nodes/pi-porch")
        assert status == 200
        assert [step[0] for step in json.loads(body)["steps"]] == [T0 + 600, T0 + 1200,
                                                                     T0 + 1800]
    finally:
        second.close()

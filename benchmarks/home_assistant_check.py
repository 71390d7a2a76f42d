"""The Home Assistant discovery checked by a real Home Assistant.

    .venv/bin/python benchmarks/home_assistant_check.py [--venv var/ha-venv] [--keep]

Installs ``homeassistant`` 2024.3.3 (the last release for Python 3.11) into its own virtual
environment (it pins paho-mqtt 1.x, and installs its integrations' requirements itself at
start), starts a private Mosquitto, Home Assistant with the MQTT integration pointed at it, and
the collector with ``--ha-discovery``; plays a node (readings, two "yes" clips, diagnostics);
and reads the entities back through Home Assistant's REST API:
- the reading sensors show the last reading, the forecast sensors their model's next step
  with every step as attributes;
- the word said twice fires the keyword event twice, and a noise fires nothing;
- a word of the node's own (``collector enroll --word happy`` while the collector runs) joins
  the event entity's types, and saying it fires the event;
- the diagnostic entities show the node's diagnostics;
- after ``python -m collector ha-remove``, the node's entities are gone.
Prints one line per check and exits 1 if one fails. If Home Assistant cannot be installed or
started here, it says why (the error) and exits 0 with SKIPPED: the Jinja2 rendering and
schema tests in tests/test_homeassistant.py remain the check then.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinyml_core.broker import LocalMosquitto, free_port  # noqa: E402
from tinyml_core.config import BrokerConfig  # noqa: E402
from tinyml_core.messages import (  # noqa: E402
    AudioClip,
    ClimateReading,
    Forecast,
    NodeDiagnostics,
    decode_message,
)
from tinyml_core.mqtt import MqttClient  # noqa: E402
from tinyml_core.recordings import read_wav  # noqa: E402
from tinyml_core.topics import audio_topic, climate_topic, diagnostics_topic  # noqa: E402

HOME_ASSISTANT = "homeassistant==2024.3.3"
# paho-mqtt: what its MQTT integration pins (installed ahead, so the check does not depend on
# Home Assistant's own installer); josepy: 2.x broke the acme package its cloud integration
# imports (AttributeError: module 'josepy' has no attribute 'ComparableX509').
EXTRA = ["paho-mqtt==1.6.1", "josepy<2"]
NODE = "pi-ha"
CONFIGURATION = """homeassistant:
  name: tinyml-check
  time_zone: UTC
  unit_system: metric
  latitude: 0
  longitude: 0
  elevation: 0
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
websocket_api:
onboarding:
auth:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
"""


class Skipped(Exception):
    """Home Assistant cannot run here; the reason is the message."""


def install(venv: Path) -> Path:
    hass = venv / "bin" / "hass"
    if hass.exists():
        return hass
    print(f"installing {HOME_ASSISTANT} into {venv} (a few minutes, ~400 MB)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", HOME_ASSISTANT, *EXTRA],
                       check=True, capture_output=True, text=True, timeout=1800)
    except subprocess.CalledProcessError as error:
        shutil.rmtree(venv, ignore_errors=True)
        raise Skipped(f"pip failed: {(error.stderr or '')[-600:]}") from None
    except subprocess.TimeoutExpired:
        shutil.rmtree(venv, ignore_errors=True)
        raise Skipped("pip took more than 30 minutes") from None
    return hass


class HomeAssistant:
    def __init__(self, hass: Path, config: Path, broker: LocalMosquitto) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (config / ".storage").mkdir(parents=True)
        (config / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))
        entry = {"entry_id": "tinymlcheckmqtt00000000000000001", "version": 1,
                 "minor_version": 1, "domain": "mqtt", "title": "Mosquitto",
                 "data": {"broker": broker.host, "port": broker.port, "discovery": True},
                 "options": {}, "pref_disable_new_entities": False,
                 "pref_disable_polling": False, "source": "user", "unique_id": None,
                 "disabled_by": None}
        (config / ".storage" / "core.config_entries").write_text(json.dumps(
            {"version": 1, "minor_version": 1, "key": "core.config_entries",
             "data": {"entries": [entry]}}))
        self.log = config / "home-assistant.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([str(hass), "-c", str(config)], stdout=out,
                                            stderr=subprocess.STDOUT)
        self.token = ""

    def start(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Skipped(f"Home Assistant exited: {self.log.read_text()[-800:]}")
            try:
                self._call("/api/onboarding")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        else:
            raise Skipped(f"Home Assistant did not answer in {timeout:.0f} s: "
                          f"{self.log.read_text()[-800:]}")
        user = self._call("/api/onboarding/users", {
            "client_id": f"{self.base}/", "name": "check", "username": "check",
            "password": "check-password-1", "language": "en"})
        token = self._call("/auth/token", {"grant_type": "authorization_code",
                                           "code": user["auth_code"],
                                           "client_id": f"{self.base}/"}, form=True)
        self.token = token["access_token"]
        # The first start installs the integrations' requirements: that can take a while.
        state = None
        while time.monotonic() < deadline:
            entries = self._call("/api/config/config_entries/entry")
            state = {entry["domain"]: entry["state"] for entry in entries}.get("mqtt")
            if state not in ("not_loaded", "setup_in_progress", "setup_retry"):
                break
            time.sleep(1)
        if state != "loaded":
            raise Skipped(f"the MQTT integration is {state}: {self.log.read_text()[-800:]}")

    def _call(self, path: str, data: dict[str, Any] | None = None, form: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = None
        if data is not None:
            headers["Content-Type"] = ("application/x-www-form-urlencoded" if form
                                       else "application/json")
            body = (urllib.parse.urlencode(data) if form else json.dumps(data)).encode()
        request = urllib.request.Request(self.base + path, body, headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self._call("/api/states")}

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    return condition()


def run_checks(home: HomeAssistant, broker: LocalMosquitto, scratch: Path) -> list[tuple[bool,
                                                                                         str]]:
    config = BrokerConfig(host=broker.host, port=broker.port)
    log = (scratch / "collector.log").open("wb")
    settings = scratch / "collector.toml"
    settings.write_text(f'[collector]\nenrollment_path = "{scratch / "enrolled.json"}"\n')
    collector = subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--config", str(settings), "--broker",
         broker.address, "--ha-discovery", "--state", "", "--models", str(REPO / "models")],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    watcher = MqttClient(config, "check-watcher", publish_availability=False).connect()
    watcher.subscribe("predictions/#")
    node = MqttClient(config, NODE).connect()  # its status/<node> says online
    results: list[tuple[bool, str]] = []

    def check(ok: bool, what: str) -> None:
        results.append((bool(ok), what))
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)

    try:
        start = time.time() // 600 * 600 - 7200
        readings = [ClimateReading(NODE, start + 600 * i, i, 20.0 + i / 2, 40.0 + i)
                    for i in range(12)]
        node.publish(climate_topic(NODE), readings[0].encode()).wait(5)  # the first: discovery
        entity = f"sensor.tinyml_{NODE.replace('-', '_')}"
        until(lambda: f"{entity}_temperature" in home.states(), 60)

        def shown(key: str) -> float | None:
            try:
                return float(home.states().get(f"{entity}_{key}", {}).get("state", ""))
            except ValueError:
                return None

        # Home Assistant subscribes to a new entity's topics seconds after adding it (seen:
        # 3.5 s); what comes before is not seen. Readings one by one until one shows.
        sent = 1
        while sent < 6 and shown("temperature") is None:
            node.publish(climate_topic(NODE), readings[sent].encode()).wait(5)
            sent += 1
            until(lambda: shown("temperature") is not None, 2)
        forecasts: dict[str, Forecast] = {}
        for reading in readings[sent:]:
            node.publish(climate_topic(NODE), reading.encode()).wait(5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(forecasts) < 2:
            inbound = watcher.receive(timeout=0.5)
            if inbound is not None and inbound.topic.endswith("/forecast"):
                message = decode_message(inbound.topic, inbound.payload)
                assert isinstance(message, Forecast)
                if message.input_time == readings[-1].time:
                    forecasts[message.model] = message
        last = readings[-1]
        until(lambda: shown("temperature") == last.temperature)
        check(shown("temperature") == last.temperature and shown("humidity") == last.humidity,
              f"reading sensors show the last reading ({last.temperature} °C, "
              f"{last.humidity:g} %): {shown('temperature')}, {shown('humidity')}")
        for model, forecast in sorted(forecasts.items()):
            key = f"{entity}_{model}_temperature"
            state = until(lambda key=key: home.states().get(key))
            expected = round(forecast.steps[0].temperature, 1)
            values = (state or {}).get("attributes", {}).get("values")
            check(state is not None and state["state"] == str(expected)
                  and values == [s.temperature for s in forecast.steps],
                  f"{model}: next step {expected} °C, {len(forecast.steps)} steps as attributes"
                  f" ({(state or {}).get('state')}, {len(values or [])} values)")
        if len(forecasts) < 2:
            check(False, f"forecasts seen: {sorted(forecasts)}")
        event = f"event.tinyml_{NODE.replace('-', '_')}_keyword"
        rate, yes = read_wav(sorted((REPO / "samples" / "speech" / "yes").glob("*.wav"))[0])
        _, noise = read_wav(sorted((REPO / "samples" / "speech" /
                                    "_background_noise_").glob("*.wav"))[0])
        fired = []
        said = time.time()
        for seq, samples in enumerate((yes, yes, noise)):
            before = home.states().get(event, {}).get("state")
            # Three seconds apart: two words within one second are one utterance.
            node.publish(audio_topic(NODE), AudioClip.from_samples(
                NODE, said + 3 * seq, seq, rate, samples).encode()).wait(5)
            after = until(lambda before=before: (s := home.states().get(event, {})).get(
                "state") != before and s, 5)
            fired.append(after["attributes"].get("event_type") if after else None)
        check(fired == ["yes", "yes", None],
              f"'yes' twice fires the keyword event twice, a noise nothing ({fired})")
        enrolled = subprocess.run(
            [sys.executable, "-m", "collector", "enroll", NODE,
             str(REPO / "samples" / "enroll" / "kim"), "--word", "happy", "--config",
             str(settings), "--models", str(REPO / "models")], cwd=REPO, capture_output=True,
            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
        types = until(lambda: "happy" in (home.states().get(event, {}).get("attributes", {})
                                         .get("event_types") or []), 20)
        rate, happy = read_wav(REPO / "samples" / "enroll" / "kim-happy.wav")
        before = home.states().get(event, {}).get("state")
        node.publish(audio_topic(NODE), AudioClip.from_samples(
            NODE, said + 9, 3, rate, happy).encode()).wait(5)
        after = until(lambda: (s := home.states().get(event, {})).get("state") != before and s,
                      10)
        check(enrolled.returncode == 0 and bool(types) and bool(after)
              and after["attributes"].get("event_type") == "happy",
              f"a word of the node's own joins the event's types and fires it "
              f"({enrolled.stdout.strip()[-80:] or enrolled.stderr.strip()[-200:]}; "
              f"{after['attributes'].get('event_type') if after else None})")
        node.publish(diagnostics_topic(NODE), NodeDiagnostics(
            NODE, time.time(), 7, 3, 1, 2, 3, 0, 20, 0).encode(), retain=True).wait(5)
        backlog = until(lambda: home.states().get(f"{entity}_spool_backlog", {}).get(
            "state") == "7")
        check(backlog, "diagnostics: spool backlog 7 from diagnostics/<node>")
    finally:
        collector.terminate()
        collector.wait(timeout=30)
        log.close()
        node.close()
        watcher.close()
    removed = subprocess.run(
        [sys.executable, "-m", "collector", "ha-remove", NODE, "--broker", broker.address,
         "--models", str(REPO / "models")], cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    gone = removed.returncode == 0 and until(
        lambda: not any(NODE.replace("-", "_") in key for key in home.states()))
    check(gone, "after `collector ha-remove` the node's entities are gone")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / "var" / "ha-venv",
                        help="Home Assistant's own virtual environment (made if missing)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tinyml-ha-"))
    home = broker = None
    try:
        hass = install(args.venv)
        broker = LocalMosquitto(scratch / "mosquitto", stock=True).start()
        home = HomeAssistant(hass, scratch / "config", broker)
        home.start()
        results = run_checks(home, broker, scratch)
    except Skipped as skipped:
        print(f"SKIPPED: Home Assistant cannot run here: {skipped}")
        return 0
    finally:
        if home is not None:
            home.close()
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = [what for ok, what in results if not ok]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed against "
          f"{HOME_ASSISTANT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

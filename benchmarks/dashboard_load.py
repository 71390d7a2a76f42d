"""The dashboard with 500 nodes: memory and how fast the page's data comes back.

    .venv/bin/python benchmarks/dashboard_load.py [--nodes 500] [--live 60]

Two parts. First the history store alone, in this process (tracemalloc): 48 hours of every
node's messages (a reading and a forecast per 10-minute step, which is what the store keeps
whatever the reading rate, and a keyword an hour) through ``History.add``. Then a real
`python -m dashboard run` process on a private Mosquitto for ``--live`` seconds at the real
rate: every node a reading every 10 s, spread over the 10 s, while the overview and a node
page are fetched once a second and 5 pages hold the event stream open. Printed: the store's
size when full, the process's resident memory (now and peak) and the API's latency; the process
when full is about their sum.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dashboard.store import History  # noqa: E402
from tinyml_core.broker import LocalMosquitto, free_port, wait_for_port  # noqa: E402
from tinyml_core.config import BrokerConfig  # noqa: E402
from tinyml_core.messages import (  # noqa: E402
    ClimateReading,
    Forecast,
    ForecastStep,
    KeywordResult,
)
from tinyml_core.mqtt import MqttClient  # noqa: E402
from tinyml_core.topics import PredictionKind, climate_topic, prediction_topic  # noqa: E402

T0 = 1_729_299_600.0


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def history(nodes: int, hours: int) -> list[tuple[str, bytes]]:
    lines = []
    for step in range(1, hours * 6 + 1):
        for index in range(nodes):
            node = f"pi-{index:03d}"
            step_end = T0 + 600 * step
            lines.append((climate_topic(node), ClimateReading(
                node, step_end, step, 20 + float(np.sin(step / 20)), 50.0).encode()))
            lines.append((prediction_topic(node, PredictionKind.FORECAST), Forecast(
                node, "forecast_a", "1+abc", step_end, 0.2,
                tuple(ForecastStep(step_end + 600 * (i + 1), 20.0, 50.0)
                      for i in range(3))).encode()))
            if step % 6 == 0:
                lines.append((prediction_topic(node, PredictionKind.KEYWORD), KeywordResult(
                    node, "kws_b", "1+abc", step_end, 1.0, 0.1, "yes",
                    {"yes": 0.9, "no": 0.1}).encode()))
    return lines


def fetch_ms(url: str) -> float:
    """How long the whole answer took (a node not heard yet answers 404, also an answer)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as error:
        error.read()
    return (time.perf_counter() - started) * 1000


def hold_event_stream(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(1.0)
        while not stop.is_set():
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--hours", type=int, default=48, help="history published first")
    parser.add_argument("--live", type=int, default=60, help="seconds at the real rate")
    args = parser.parse_args()
    lines = history(args.nodes, args.hours)
    tracemalloc.start()
    store = History()
    started = time.perf_counter()
    for topic, payload in lines:
        store.add(topic, payload)
    seconds = time.perf_counter() - started
    size, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    node = store.node("pi-000") or {}
    print(f"store: {args.nodes} nodes x {args.hours} h, {len(lines)} messages in {seconds:.0f} s "
          f"({len(lines) / seconds:.0f}/s); {len(node.get('steps', []))} steps and "
          f"{len(node.get('forecasts', []))} forecasts a node; {size / 2**20:.1f} MB "
          f"(peak {peak / 2**20:.1f} MB)")
    del store, lines
    with tempfile.TemporaryDirectory() as scratch:
        broker = LocalMosquitto(Path(scratch) / "mosquitto").start()
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "dashboard", "run", "--broker", broker.address, "--listen",
             f"127.0.0.1:{port}", "-q"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        try:
            assert wait_for_port("127.0.0.1", port, 30), "the dashboard did not start"
            base = f"http://127.0.0.1:{port}"
            stop = threading.Event()
            streams = [threading.Thread(target=hold_event_stream, args=(port, stop),
                                        daemon=True) for _ in range(5)]
            for stream in streams:
                stream.start()
            overview, node_page = [], []
            live = MqttClient(BrokerConfig(host=broker.host, port=broker.port), "load-nodes",
                              publish_availability=False).connect()
            end = time.monotonic() + args.live
            sent = 0
            while time.monotonic() < end:
                second = time.monotonic()
                for _ in range(args.nodes // 10):  # every node once per 10 s
                    node = f"pi-{sent % args.nodes:03d}"
                    time_s = T0 + args.hours * 3600 + 10 * (sent // args.nodes)
                    live.publish(climate_topic(node),
                                 ClimateReading(node, time_s, sent, 20.0, 50.0).encode())
                    sent += 1
                overview.append(fetch_ms(f"{base}/api/nodes"))
                node_page.append(fetch_ms(f"{base}/api/nodes/pi-{(sent - 1) % args.nodes:03d}"))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - second)))
            live.close()
            stop.set()
            memory = memory_mb(process.pid)
            print(f"live: {sent} readings in {args.live} s ({sent / args.live:.0f}/s), 5 event "
                  "streams open")
            for name, values in (("overview /api/nodes", overview),
                                 ("node page /api/nodes/<id>", node_page)):
                p50, p99 = np.percentile(values, [50, 99])
                print(f"  {name:<26} p50 {p50:6.1f} ms, p99 {p99:6.1f} ms")
            print(f"memory: {memory['VmRSS']:.1f} MB now, peak {memory['VmHWM']:.1f} MB")
        finally:
            process.terminate()
            process.wait(timeout=10)
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

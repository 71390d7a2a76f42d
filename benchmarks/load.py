"""A steady load like a real deployment: 100 nodes, each publishing a reading every second
and a one-second clip every 10 seconds, against one and then two collectors.

    .venv/bin/python benchmarks/load.py [--nodes 100] [--duration 60] [--collectors 1 2]

Each simulated node is its own MQTT connection (the project's MqttClient, QoS 1, Last Will),
its messages spread evenly over the second. Readings are 10 minutes apart in node time, so
from a node's sixth reading on every reading completes a window and is forecast
(forecast_a); every clip gets a keyword (kws_b). Two collectors share the clips
(``--share``) and split the nodes' readings (``--partition``). Reported per run:
- throughput: messages in and predictions out per second;
- latency from publish to prediction, p50 and p99, for forecasts and keywords;
- lost: expected predictions that never came (10 s of grace after the last publish);
- CPU (% of one core, user + system) and peak RSS of the broker, each collector and the
  load generator (this process: 100 clients, their threads and the listener).

``--flood`` adds one more node that publishes valid readings as fast as Mosquitto's C client
can (``mosquitto_pub -l``, QoS 1), each completing a window: a buggy or hijacked node. The
collectors run with their per-node rate limit (``--rate-limit``, 250/s by default; 0: none), so
the run shows whether the other nodes' forecasts stay fast and complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from collector_throughput import start_workers, wait_until_online  # noqa: E402

from tinyml_core.broker import LocalMosquitto  # noqa: E402
from tinyml_core.config import BrokerConfig  # noqa: E402
from tinyml_core.messages import AudioClip, ClimateReading  # noqa: E402
from tinyml_core.mqtt import InboundMessage, MqttClient  # noqa: E402
from tinyml_core.recordings import read_wav  # noqa: E402
from tinyml_core.topics import audio_topic, climate_topic  # noqa: E402

T0 = 1_700_000_400.0  # a multiple of 600 s: readings fall on step ends
WINDOW = 6
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """CPU and memory of one process, from /proc."""

    pid: int
    cpu_start: float = 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def start(self) -> None:
        self.cpu_start = self.cpu_seconds()

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@dataclass
class Run:
    sent: dict[str, float] = field(default_factory=dict)  # prediction key → publish time
    received: dict[str, float] = field(default_factory=dict)
    repeats: int = 0
    inputs: int = 0


def schedule(nodes: int, duration: int) -> list[tuple[float, int, str, int]]:
    """(offset s, node, kind, step): node n publishes at n/nodes past each second."""
    events = []
    for second in range(duration):
        for node in range(nodes):
            offset = second + node / nodes
            events.append((offset, node, "climate", second))
            if (second + node) % 10 == 0:  # clips spread over the 10 s too
                events.append((offset + 0.5 / nodes, node, "audio", second))
    return sorted(events)


FLOODER = "load-flooder"


class Flooder:
    """One node publishing readings as fast as ``mosquitto_pub -l`` can (QoS 1), each a new step
    (so every one it gets through completes a window), until stopped."""

    ROUND = 20_000

    def __init__(self, broker: LocalMosquitto, scratch: Path) -> None:
        self.broker, self.scratch = broker, scratch
        self.sent = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flood, daemon=True)
        self._thread.start()

    def _flood(self) -> None:
        lines = self.scratch / "flood.txt"
        step = 0
        while not self._stop.is_set():
            with lines.open("wb") as out:
                for _ in range(self.ROUND):
                    out.write(ClimateReading(FLOODER, T0 + 600.0 * step, step, 20.0, 50.0)
                              .encode() + b"\n")
                    step += 1
            with lines.open("rb") as source:
                process = subprocess.Popen(
                    ["mosquitto_pub", "-h", self.broker.host, "-p", str(self.broker.port), "-q",
                     "1", "-i", FLOODER, "-t", climate_topic(FLOODER), "-l"], stdin=source,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                usage = Usage(process.pid)
                cpu = 0.0
                while process.poll() is None:
                    cpu = usage.cpu_seconds()
                    if self._stop.wait(0.1):
                        process.terminate()
                self.cpu_seconds += cpu
                process.wait()
                if process.returncode == 0:
                    self.sent += self.ROUND

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run(broker: LocalMosquitto, collectors: int, nodes: int, duration: int,
        sample: np.ndarray, scratch: Path, flood: bool = False, rate_limit: float = 0.0) -> None:
    config = BrokerConfig(host=broker.host, port=broker.port, connect_timeout_s=10)
    workers = start_workers(broker, collectors, "readings", scratch,  # forecast_a + kws_e
                            rate_limit_per_s=rate_limit)
    wait_until_online(broker, collectors)
    result = Run()
    lock = threading.Lock()

    flood_answers = {"forecasts": 0, "error records": 0, "dropped (reported)": 0}

    def on_prediction(message: InboundMessage) -> None:
        kind = message.topic.rsplit("/", 1)[1]
        document = json.loads(message.payload)
        if document["node_id"] == FLOODER:
            with lock:
                if message.topic.startswith("errors/"):
                    flood_answers["error records"] += 1
                    reason = document["reason"]
                    if "dropped since" in reason:
                        flood_answers["dropped (reported)"] += int(
                            reason.rsplit(": ", 1)[1].split()[0])
                else:
                    flood_answers["forecasts"] += 1
            return
        key = f"{kind}:{document['node_id']}@{document['input_time']}"
        with lock:
            if key in result.received:
                result.repeats += 1
            else:
                result.received[key] = time.time()

    listener = MqttClient(config, "load-listener", publish_availability=False,
                          handler=on_prediction)
    listener.connect()
    listener.subscribe("predictions/#")
    listener.subscribe(f"errors/{FLOODER}")
    clients = [MqttClient(config, f"load-node-{n:03d}").connect() for n in range(nodes)]
    usages = {"broker": Usage(broker.pid or 0), "load generator": Usage(os.getpid())}
    usages.update({f"collector {i + 1}": Usage(w.pid) for i, w in enumerate(workers)})
    for usage in usages.values():
        usage.start()
    events = schedule(nodes, duration)
    flooder = Flooder(broker, scratch) if flood else None
    started = time.time()
    for offset, node, kind, step in events:
        delay = started + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        node_id = f"load-node-{node:03d}"
        if kind == "climate":
            message: ClimateReading | AudioClip = ClimateReading(
                node_id, T0 + 600.0 * step, step, 20.0 + 0.01 * step, 50.0)
            topic = climate_topic(node_id)
            expected = "forecast" if step >= WINDOW - 1 else None
        else:
            message = AudioClip.from_samples(node_id, T0 + step, step, 16000, sample)
            topic = audio_topic(node_id)
            expected = "keyword"
        payload = message.encode()
        sent_at = time.time()
        clients[node].publish(topic, payload)
        result.inputs += 1
        if expected:
            result.sent[f"{expected}:{node_id}@{message.time}"] = sent_at
    publishing = time.time() - started
    if flooder is not None:
        flooder.stop()
    deadline = time.time() + 10
    while time.time() < deadline and len(result.received) < len(result.sent):
        time.sleep(0.1)
    cpu = {name: (usage.cpu_seconds() - usage.cpu_start) / publishing * 100
           for name, usage in usages.items()}
    peak = {name: usage.peak_rss_mb() for name, usage in usages.items()}
    for client in clients:
        client.close(timeout=2)
    listener.close()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=10)

    def percentiles(kind: str) -> str:
        latencies = [(result.received[key] - sent) * 1000 for key, sent in result.sent.items()
                     if key in result.received and key.startswith(kind)]
        if not latencies:
            return "   n/a"
        p50, p99 = np.percentile(latencies, [50, 99])
        return f"{p50:6.1f} / {p99:6.1f}"

    lost = sum(1 for key in result.sent if key not in result.received)
    print(f"\n{collectors} collector{'s' if collectors > 1 else ''}: {nodes} nodes for "
          f"{duration} s, {result.inputs} messages in ({result.inputs / publishing:.0f}/s), "
          f"{len(result.received)} predictions out ({len(result.received) / publishing:.0f}/s)")
    if flooder is not None:
        limit = f"rate limit {rate_limit:g}/s per node" if rate_limit else "no rate limit"
        print(f"  flooding node ({limit}): at least {flooder.sent} readings sent "
              f"({flooder.sent / publishing:.0f}/s, {flooder.cpu_seconds / publishing * 100:.0f} "
              "% CPU); " + ", ".join(f"{count} {what}" for what, count in flood_answers.items()))
    print(f"  latency p50 / p99 (ms): forecasts {percentiles('forecast')}, "
          f"keywords {percentiles('keyword')}")
    print(f"  lost: {lost} of {len(result.sent)} expected predictions"
          f" ({result.repeats} repeated)")
    for name in usages:
        print(f"  {name:<15} CPU {cpu[name]:5.1f} %   peak RSS {peak[name]:6.1f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="simulated nodes (default 100)")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument("--collectors", type=int, nargs="+", default=[1, 2],
                        help="collector counts to run (default: 1 2)")
    parser.add_argument("--flood", action="store_true",
                        help="add a node publishing readings as fast as it can")
    parser.add_argument("--rate-limit", type=float, nargs="+", default=[250.0],
                        metavar="PER_S",
                        help="collectors' per-node rate limits to run (0: none; default 250)")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("mosquitto not found: apt-get install mosquitto", file=sys.stderr)
        return 2
    _, sample = read_wav(next((REPO / "samples" / "speech" / "yes").glob("*.wav")))
    for collectors in args.collectors:
        for rate_limit in args.rate_limit:
            with tempfile.TemporaryDirectory() as scratch:
                broker = LocalMosquitto(Path(scratch) / "mosquitto").start()
                try:
                    run(broker, collectors, args.nodes, args.duration, sample, Path(scratch),
                        args.flood, rate_limit)
                finally:
                    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

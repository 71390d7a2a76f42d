"""Collector throughput and latency against a private Mosquitto.

    .venv/bin/python benchmarks/collector_throughput.py [--nodes 20] [--clips 2000]
        [--readings 20000] [--workers 1 2]

For 1 and 2 workers (``python -m collector run --share``, separate processes) it measures:
- clips/s and readings/s: a burst from N simulated nodes, rate = messages / time from the
  first publish to the last prediction received (QoS 1 everywhere);
- p50/p99 publish→prediction latency at half the measured rate, paced;
- lost messages: inputs that got no prediction.
Readings are 10 minutes apart in node time so every reading completes a window and yields
a forecast; one forecaster (forecast_a) runs, as a Pi deployment would.
Prints one table; numbers depend on the machine (this one: 2 cores shared by broker,
workers and load generator).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinyml_core.broker import LocalMosquitto  # noqa: E402
from tinyml_core.config import BrokerConfig  # noqa: E402
from tinyml_core.messages import AudioClip, ClimateReading  # noqa: E402
from tinyml_core.mqtt import MqttClient  # noqa: E402
from tinyml_core.recordings import read_wav  # noqa: E402
from tinyml_core.topics import audio_topic, climate_topic  # noqa: E402

T0 = 1_700_000_400.0  # a multiple of 600 s: readings fall on step ends


@dataclass
class Result:
    rate: float
    lost: int
    latencies_ms: list[float]


def start_workers(broker: LocalMosquitto, count: int, kind: str,
                  scratch: Path) -> list[subprocess.Popen[str]]:
    forecasts = '["forecast_a"]' if kind == "readings" else "[]"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    workers = []
    for index in range(count):
        config = scratch / f"collector-{index}.toml"
        config.write_text(f'[collector]\nid = "bench-worker-{index}"\n'
                          f'forecast_models = {forecasts}\nkeyword_model = "kws_b"\n'
                          "queue_size = 1000000\nstats_interval_s = 3600\n")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "--config", str(config), "--broker",
             f"{broker.host}:{broker.port}", "--models", str(REPO / "models"),
             "--share", "bench", "-q"], cwd=REPO, env=env, text=True))
    return workers


def messages(kind: str, prefix: str, nodes: int, count: int,
             sample: np.ndarray) -> list[tuple[str, bytes, str]]:
    """(topic, payload, key) with key = what the prediction will name: node and input time."""
    out = []
    for index in range(count):
        node = f"{prefix}-{index % nodes}"
        step = index // nodes
        if kind == "clips":
            message: ClimateReading | AudioClip = AudioClip.from_samples(
                node, T0 + step, step, 16000, sample)
            topic = audio_topic(node)
        else:
            message = ClimateReading(node, T0 + 600.0 * step, step, 20.0 + 0.01 * step, 50.0)
            topic = climate_topic(node)
        out.append((topic, message.encode(), f"{node}@{message.time}"))
    return out


def run_load(config: BrokerConfig, kind: str, batch: list[tuple[str, bytes, str]],
             rate: float | None, expected: int) -> Result:
    """Publish ``batch`` (paced at ``rate``/s when given) and wait for the predictions."""
    received: dict[str, float] = {}
    done = threading.Event()
    listener = MqttClient(config, f"bench-listener-{kind}-{time.monotonic_ns()}",
                          publish_availability=False, queue_size=10_000_000).connect()
    suffix = "keyword" if kind == "clips" else "forecast"
    listener.subscribe(f"predictions/+/{suffix}")

    def listen() -> None:
        import json

        while not done.is_set():
            inbound = listener.receive(timeout=0.2)
            if inbound is None:
                continue
            document = json.loads(inbound.payload)
            received.setdefault(f"{document['node_id']}@{document['input_time']}",
                                time.perf_counter())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    publisher = MqttClient(config, f"bench-nodes-{kind}-{time.monotonic_ns()}",
                           publish_availability=False, max_inflight=1000).connect()
    sent_at: dict[str, float] = {}
    started = time.perf_counter()
    for index, (topic, payload, key) in enumerate(batch):
        if rate:
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent_at[key] = time.perf_counter()
        publisher.publish(topic, payload)
    deadline = time.perf_counter() + 60
    while len(received) < expected and time.perf_counter() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    done.set()
    thread.join(timeout=2)
    publisher.close()
    listener.close()
    answered = [key for key in sent_at if key in received]
    finished = max(received.values()) if received else time.perf_counter()
    latencies = [(received[key] - sent_at[key]) * 1000 for key in answered]
    return Result(len(answered) / (finished - started), expected - len(answered), latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="simulated nodes (default 20)")
    parser.add_argument("--clips", type=int, default=2000, help="clips per burst")
    parser.add_argument("--readings", type=int, default=20000, help="readings per burst")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    _, sample = read_wav(next((REPO / "samples" / "speech" / "yes").glob("*.wav")))
    print(f"{'workers':>7} {'kind':>8} {'burst/s':>9} {'lost':>5} {'half-load p50':>14} "
          f"{'p99 (ms)':>9}")
    for workers in args.workers:
        for kind, count in (("clips", args.clips), ("readings", args.readings)):
            with tempfile.TemporaryDirectory() as scratch:
                broker = LocalMosquitto(Path(scratch) / "mosquitto").start()
                processes = start_workers(broker, workers, kind, Path(scratch))
                try:
                    config = BrokerConfig(host=broker.host, port=broker.port)
                    time.sleep(2.0)  # workers load models and subscribe
                    # Readings need 5 earlier steps per node before the first forecast.
                    warm = 0 if kind == "clips" else 5 * args.nodes
                    batch = messages(kind, "burst", args.nodes, count + warm, sample)
                    burst = run_load(config, kind, batch, None, count)
                    paced_batch = messages(kind, "paced", args.nodes, count // 2 + warm, sample)
                    paced = run_load(config, kind, paced_batch, burst.rate / 2, count // 2)
                    p50, p99 = (np.percentile(paced.latencies_ms, [50, 99])
                                if paced.latencies_ms else (float("nan"),) * 2)
                    print(f"{workers:>7} {kind:>8} {burst.rate:>9.0f} "
                          f"{burst.lost + paced.lost:>5} {p50:>14.2f} {p99:>9.2f}", flush=True)
                finally:
                    for process in processes:
                        process.terminate()
                    for process in processes:
                        process.wait(timeout=10)
                    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Collector throughput and latency against a private Mosquitto.

    .venv/bin/python benchmarks/collector_throughput.py [--nodes 20] [--clips 2000]
        [--readings 20000] [--workers 1 2] [--state] [--keyword-model kws_b]

For 1 and 2 workers (separate processes: clips shared with ``--share``, readings split by node
with ``--partition K/N``) it measures:
- clips/s and readings/s: a burst from N simulated nodes, rate = messages / time from the
  first publish to the last prediction received (QoS 1 everywhere);
- p50/p99 publish→prediction latency at half the measured rate, paced;
- lost messages: inputs that got no prediction;
- worker CPU per message (user + system time of the worker processes during the burst).
The simulated nodes are Mosquitto's own C clients (one ``mosquitto_pub -l`` per node, one
``mosquitto_sub`` for the predictions), so the two cores go to the broker and the workers,
not to a Python load generator. Readings are 10 minutes apart in node time so every reading
completes a window and yields a forecast; one forecaster (forecast_a) runs, as a Pi
deployment would. Numbers depend on the machine (this one: 2 cores shared by broker,
workers and load generator).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.settings import KEYWORD_MODELS, CollectorOptions  # noqa: E402
from tinyml_core.broker import LocalMosquitto  # noqa: E402
from tinyml_core.messages import AudioClip, ClimateReading  # noqa: E402
from tinyml_core.recordings import read_wav  # noqa: E402
from tinyml_core.topics import audio_topic, climate_topic  # noqa: E402

KEYWORD_MODEL = CollectorOptions().keyword_model
T0 = 1_700_000_400.0  # a multiple of 600 s: readings fall on step ends
SPOOL = "0123456789abcdef"  # every simulated node's numbering, as a node's spool names it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    rate: float
    lost: int
    latencies_ms: list[float]
    cpu_us_per_message: float


def start_workers(broker: LocalMosquitto, count: int, kind: str, scratch: Path,
                  rate_limit_per_s: float = 0.0, state: bool = False,
                  keyword_model: str = KEYWORD_MODEL) -> list[subprocess.Popen[str]]:
    """Collector processes (no saved windows unless ``state``: then windows and the journal
    of what was taken, as a deployment runs; no per-node rate limit unless given: a
    throughput run sends far more per node than any real node)."""
    forecasts = '["forecast_a"]' if kind == "readings" else "[]"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    workers = []
    for index in range(count):
        config = scratch / f"collector-{index}.toml"
        config.write_text(f'[collector]\nid = "bench-worker-{index}"\n'
                          f'forecast_models = {forecasts}\nkeyword_model = "{keyword_model}"\n'
                          "stats_interval_s = 3600\n"
                          f"state_path = \"{scratch / '{id}.json' if state else ''}\"\n"
                          f"rate_limit_per_s = {rate_limit_per_s}\n")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "--config", str(config), "--broker",
             f"{broker.host}:{broker.port}", "--models", str(REPO / "models"),
             *(["--share", "bench", "--partition", f"{index + 1}/{count}"] if count > 1 else []),
             "-q"], cwd=REPO, env=env, text=True))
    return workers


def wait_until_online(broker: LocalMosquitto, count: int, timeout_s: float = 60.0) -> None:
    """Until every worker said ``online`` (its models loaded, subscribed: a worker says it
    only then): a keyword model on the speech embedding loads three models, and a message
    sent before a worker subscribed would be counted lost."""
    done = subprocess.run(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
                           "-t", "status/+", "-C", str(count),
                           "-W", str(int(timeout_s))], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the workers did not come online in {timeout_s:.0f} s")


def cpu_seconds(processes: list[subprocess.Popen[str]]) -> float:
    total = 0
    for process in processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICKS


def messages(kind: str, prefix: str, nodes: int, count: int,
             sample: np.ndarray) -> list[tuple[str, bytes, str]]:
    """(topic, payload, key) with key = what the prediction will name: node and input time."""
    out = []
    for index in range(count):
        node = f"{prefix}-{index % nodes}"
        step = index // nodes
        if kind == "clips":
            message: ClimateReading | AudioClip = AudioClip.from_samples(
                node, T0 + step, step, 16000, sample, SPOOL)
            topic = audio_topic(node)
        else:
            message = ClimateReading(node, T0 + 600.0 * step, step, 20.0 + 0.01 * step, 50.0,
                                     SPOOL)
            topic = climate_topic(node)
        out.append((topic, message.encode(), f"{node}@{message.time}"))
    return out


def run_load(broker: LocalMosquitto, kind: str, batch: list[tuple[str, bytes, str]],
             rate: float | None, expected: int, workers: list[subprocess.Popen[str]]) -> Result:
    """Publish ``batch`` (paced at ``rate``/s when given) and wait for the predictions."""
    address = ["-h", broker.host, "-p", str(broker.port), "-q", "1"]
    suffix = "keyword" if kind == "clips" else "forecast"
    listener = subprocess.Popen(
        ["mosquitto_sub", *address, "-t", f"predictions/+/{suffix}", "-R", "-F", "%U %p",
         "-C", str(expected), "-W", "120"], stdout=subprocess.PIPE)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(listener.stdout), daemon=True)
    reader.start()
    time.sleep(0.5)  # the listener subscribes
    publishers = {topic: subprocess.Popen(["mosquitto_pub", *address, "-t", topic, "-l"],
                                          stdin=subprocess.PIPE)
                  for topic in dict.fromkeys(topic for topic, _, _ in batch)}
    time.sleep(0.5)  # the publishers connect
    sent_at: dict[str, float] = {}
    cpu_before = cpu_seconds(workers)
    started = time.time()
    for index, (topic, payload, key) in enumerate(batch):
        if rate:
            delay = started + index / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        sent_at[key] = time.time()
        publishers[topic].stdin.write(payload + b"\n")  # type: ignore[union-attr]
        if rate:
            publishers[topic].stdin.flush()  # type: ignore[union-attr]
    for publisher in publishers.values():
        publisher.stdin.flush()  # type: ignore[union-attr]
    listener.wait(timeout=180)
    reader.join(timeout=5)
    cpu = cpu_seconds(workers) - cpu_before
    # Closed only now: mosquitto_pub -l may drop a line that arrives just before end of input.
    for publisher in publishers.values():
        publisher.stdin.close()  # type: ignore[union-attr]
    for publisher in publishers.values():
        publisher.wait(timeout=30)
    received: dict[str, float] = {}
    for line in lines:
        stamp, payload = line.split(b" ", 1)
        document = json.loads(payload)
        received.setdefault(f"{document['node_id']}@{document['input_time']}", float(stamp))
    answered = [key for key in sent_at if key in received]
    finished = max(received.values()) if received else time.time()
    latencies = [(received[key] - sent_at[key]) * 1000 for key in answered]
    return Result(len(answered) / (finished - started), expected - len(answered), latencies,
                  cpu / max(1, len(batch)) * 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="simulated nodes (default 20)")
    parser.add_argument("--clips", type=int, default=2000, help="clips per burst")
    parser.add_argument("--readings", type=int, default=20000, help="readings per burst")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="+", choices=("clips", "readings"),
                        default=["clips", "readings"])
    parser.add_argument("--state", action="store_true",
                        help="workers keep a state file and its journal, as deployed")
    parser.add_argument("--keyword-model", default=KEYWORD_MODEL, choices=KEYWORD_MODELS,
                        help=f"what answers the clips (default: the collector's, "
                             f"{KEYWORD_MODEL})")
    args = parser.parse_args()
    _, sample = read_wav(next((REPO / "samples" / "speech" / "yes").glob("*.wav")))
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install the mosquitto-clients package", file=sys.stderr)
            return 2
    print(f"{'workers':>7} {'kind':>8} {'burst/s':>9} {'lost':>5} {'half-load p50':>14} "
          f"{'p99 (ms)':>9} {'worker CPU/msg':>15}")
    for workers in args.workers:
        for kind in args.kinds:
            count = args.clips if kind == "clips" else args.readings
            with tempfile.TemporaryDirectory() as scratch:
                broker = LocalMosquitto(Path(scratch) / "mosquitto").start()
                processes = start_workers(broker, workers, kind, Path(scratch),
                                          state=args.state, keyword_model=args.keyword_model)
                try:
                    wait_until_online(broker, workers)
                    # Readings need 5 earlier steps per node before the first forecast.
                    warm = 0 if kind == "clips" else 5 * args.nodes
                    batch = messages(kind, "burst", args.nodes, count + warm, sample)
                    burst = run_load(broker, kind, batch, None, count, processes)
                    paced_batch = messages(kind, "paced", args.nodes, count // 2 + warm, sample)
                    paced = run_load(broker, kind, paced_batch, burst.rate / 2, count // 2,
                                     processes)
                    p50, p99 = (np.percentile(paced.latencies_ms, [50, 99])
                                if paced.latencies_ms else (float("nan"),) * 2)
                    print(f"{workers:>7} {kind:>8} {burst.rate:>9.0f} "
                          f"{burst.lost + paced.lost:>5} {p50:>14.2f} {p99:>9.2f} "
                          f"{burst.cpu_us_per_message:>12.0f} µs", flush=True)
                finally:
                    for process in processes:
                        process.terminate()
                    for process in processes:
                        process.wait(timeout=10)
                    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

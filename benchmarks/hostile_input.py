"""The collector under hostile input: how fast it rejects, and how much memory it takes.

    .venv/bin/python benchmarks/hostile_input.py [--count 1000] [--rounds 3]

Sends ``--rounds`` rounds of ``--count`` hostile payloads (tests/hostile.py: random bytes,
truncated and deeply nested JSON, wrong types, NaN, absurd timestamps, wrong sample rates,
base64 garbage, plus two 10 MB clips and two oversized readings per round) to a
``python -m collector run`` process through a private Mosquitto, waits for every error record,
and prints the rate and the collector's resident memory after each round, and its peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.collector_runner import memory_kb, start_collector, wait_online  # noqa: E402
from tests.conftest import broker_config  # noqa: E402
from tests.hostile import hostile_cases  # noqa: E402
from tinyml_core.broker import LocalMosquitto  # noqa: E402
from tinyml_core.mqtt import MqttClient  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="payloads per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        broker = LocalMosquitto(Path(scratch) / "mosquitto").start()
        collector = start_collector(broker, Path(scratch) / "collector.log")
        try:
            wait_online(broker)
            listener = MqttClient(broker_config(broker), "hostile-listener",
                                  publish_availability=False).connect()
            listener.subscribe("errors/#")
            sender = MqttClient(broker_config(broker), "hostile-sender",
                                publish_availability=False).connect()
            memory = memory_kb(collector.pid)
            print(f"collector at rest: RSS {memory['VmRSS'] / 1024:.1f} MB")
            for round_index in range(args.rounds):
                cases = hostile_cases(args.count, seed=round_index)
                started = time.perf_counter()
                for case in cases:
                    sender.publish(case.topic, case.payload)
                records = 0
                while records < len(cases) and listener.receive(timeout=30) is not None:
                    records += 1
                elapsed = time.perf_counter() - started
                memory = memory_kb(collector.pid)
                print(f"round {round_index + 1}: {len(cases)} payloads "
                      f"({sum(len(c.payload) for c in cases) / 1e6:.1f} MB), {records} error "
                      f"records in {elapsed:.1f} s ({records / elapsed:.0f}/s); collector RSS "
                      f"{memory['VmRSS'] / 1024:.1f} MB, alive: {collector.poll() is None}")
            print(f"collector peak RSS: {memory['VmHWM'] / 1024:.1f} MB")
            sender.close()
            listener.close()
        finally:
            collector.terminate()
            collector.wait(timeout=15)
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

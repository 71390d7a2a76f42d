"""The node's import time and resident memory (targets: < 0.5 s import, < 50 MB RSS).

    .venv/bin/python benchmarks/node_footprint.py [--runs 5] [--seconds 10]

Import time: a fresh interpreter importing what ``python -m node run`` imports (daemon,
sources, spool, paho, numpy; plus the DHT11 driver when installed), median of ``--runs``.
Memory: a node daemon against a private Mosquitto, spooling and forwarding a reading every
0.1 s and a one-second 16 kHz clip every second for ``--seconds``; peak RSS (VmHWM) of that
process. Also checks that TensorFlow and scipy were never imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinyml_core.broker import LocalMosquitto  # noqa: E402

IMPORTS = """
import time
started = time.perf_counter()
import node.__main__, node.daemon, node.sources, node.spool
try:
    import adafruit_dht  # the DHT11 driver, as on the Pi
    driver = True
except Exception:
    driver = False
import json, sys
print(json.dumps({"seconds": time.perf_counter() - started, "driver": driver,
                  "heavy": sorted(m for m in ("tensorflow", "scipy", "tf_keras")
                                  if m in sys.modules)}))
"""

DAEMON = """
import json, sys, time
import numpy as np
from node.daemon import Node
from node.settings import NodeIdentity, NodeSettings
from tinyml_core.config import BrokerConfig
port, spool, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
settings = NodeSettings(broker=BrokerConfig(host="127.0.0.1", port=port),
                        node=NodeIdentity(id="pi-footprint", spool_path=spool))
node = Node(settings)
node.start()
clip = (3000 * np.sin(np.arange(16000) * 0.3)).astype(np.int16)
end = time.monotonic() + seconds
tick = 0
while time.monotonic() < end:
    node.record_reading(21.0, 45.0)
    if tick % 10 == 0:
        node.record_clip(time.time(), 16000, clip)
    tick += 1
    node.run(0.1)
node.close()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"peak_rss_kb": int(status["VmHWM"].split()[0]),
                  "sent": node.forwarder.stats.sent, "acknowledged":
                  node.forwarder.stats.acknowledged,
                  "heavy": sorted(m for m in ("tensorflow", "scipy") if m in sys.modules)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="import measurements (default 5)")
    parser.add_argument("--seconds", type=float, default=10.0, help="daemon run (default 10)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), BLINKA_SKIP_DEPENDENCY_CHECK="1")
    imports = []
    for _ in range(args.runs):
        done = subprocess.run([sys.executable, "-c", IMPORTS], cwd=REPO, env=env,
                              capture_output=True, text=True, check=True)
        imports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = statistics.median(run["seconds"] for run in imports)
    driver = "with" if imports[0]["driver"] else "without (not installed)"
    print(f"import: {median * 1000:.0f} ms median of {args.runs} ({driver} the DHT11 driver); "
          f"heavy modules: {imports[0]['heavy'] or 'none'}")
    with tempfile.TemporaryDirectory() as scratch:
        broker = LocalMosquitto(Path(scratch) / "mosquitto").start()
        try:
            done = subprocess.run(
                [sys.executable, "-c", DAEMON, str(broker.port), str(Path(scratch) / "spool"),
                 str(args.seconds)], cwd=REPO, env=env, capture_output=True, text=True,
                check=True)
        finally:
            broker.stop()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"daemon: peak RSS {result['peak_rss_kb'] / 1024:.1f} MB over {args.seconds:g} s; "
          f"sent {result['sent']}, acknowledged {result['acknowledged']}; heavy modules: "
          f"{result['heavy'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

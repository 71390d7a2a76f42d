"""A node daemon in its own process, for tests that kill it: ``python -m tests.node_process``.

It is ``node.daemon.Node`` as ``python -m node run`` builds it, with ``--readings N`` fed
straight into it (10 minutes apart in node time) instead of at a DHT11's pace.
"""

from __future__ import annotations

import argparse
import logging
import sys

from node.daemon import Node
from node.settings import NodeIdentity, NodeSettings
from tinyml_core.cli import stop_on_signals
from tinyml_core.config import BrokerConfig

START = 1_729_300_000.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--readings", type=int, default=0)
    parser.add_argument("--rate", type=float, default=50.0, help="flush rate per second")
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    settings = NodeSettings(
        broker=BrokerConfig(host="127.0.0.1", port=args.port, reconnect_min_s=0.1,
                            reconnect_max_s=0.5, connect_timeout_s=5.0, keepalive_s=5),
        node=NodeIdentity(id="pi-proc", spool_path=args.spool, flush_rate_per_s=args.rate))
    node = Node(settings)
    stop_on_signals(node.stop)
    node.start()
    for index in range(args.readings):
        node.record_reading(20.0, 50.0, time_s=START + 600.0 * index)
    print("spooled", flush=True)
    node.run(args.duration, stats_interval_s=1.0)
    node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

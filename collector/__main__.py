"""``python -m collector``: the inference worker's command line."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tinyml_core.cli import (
    add_broker_arguments,
    add_config_command,
    add_logging_arguments,
    load_from_args,
    print_settings,
    run_main,
    setup_logging,
    stop_on_signals,
    stop_on_thread_death,
)
from tinyml_core.errors import ModelLoadError, MqttError
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import validate_id

from .homeassistant import removal_messages
from .inference import Inference
from .recorder import default_filters, open_output, record
from .settings import CollectorSettings
from .worker import Worker

DEFAULT_CONFIG = os.environ.get("TINYML_COLLECTOR_CONFIG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m collector",
        description="Inference worker: turns sensors/# into predictions/# (see "
                    "docs/protocol.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = add_config_command(commands, DEFAULT_CONFIG)
    run = commands.add_parser(
        "run", help="subscribe to the nodes and publish predictions until stopped",
        description="Subscribe (QoS 1, persistent session) to sensors/+/climate and "
                    "sensors/+/audio, run the models of models/manifest.json and publish "
                    "predictions/<node>/forecast and /keyword; bad input gets an errors/<node> "
                    "record. Stops cleanly on SIGINT/SIGTERM.")
    add_broker_arguments(run, DEFAULT_CONFIG)
    run.add_argument("--share", metavar="GROUP",
                     help="MQTT shared subscription group: workers in it split the audio clips")
    run.add_argument("--partition", metavar="K/N",
                     help="forecast only the nodes in part K of N (e.g. 1/2 and 2/2 on two "
                          "workers); every worker still receives all readings")
    run.add_argument("--ha-discovery", action="store_true", default=None,
                     help="publish Home Assistant MQTT discovery configs for every node seen")
    run.add_argument("--state", metavar="FILE",
                     help="windows saved on a clean stop and every state_save_s, loaded at "
                          "start (overrides [collector] state_path; \"\": none)")
    run.add_argument("--duration", type=float, metavar="SECONDS",
                     help="stop after this long (default: run until stopped)")
    add_logging_arguments(run)
    recorder = commands.add_parser(
        "record", help="write every message under sensors/# to a JSON-lines file",
        description="Record sensors/# (and predictions/# with --predictions) as JSON lines "
                    "with receive time, topic and payload, for `python -m node replay`.")
    recorder.add_argument("--out", type=Path, required=True, metavar="FILE",
                          help="JSON-lines file to append to")
    recorder.add_argument("--topics", nargs="+", metavar="FILTER",
                          help="topic filters to record instead of sensors/#")
    recorder.add_argument("--predictions", action="store_true",
                          help="also record predictions/#")
    recorder.add_argument("--duration", type=float, metavar="SECONDS",
                          help="stop after this long (default: until SIGINT/SIGTERM)")
    add_broker_arguments(recorder, DEFAULT_CONFIG)
    add_logging_arguments(recorder)
    remove = commands.add_parser(
        "ha-remove", help="remove retired nodes from Home Assistant",
        description="Publish empty retained discovery configs for each NODE: Home Assistant "
                    "removes its device's entities and triggers. Connects as <collector "
                    "id>-admin (config/mosquitto/acl).")
    remove.add_argument("node_ids", nargs="+", metavar="NODE")
    add_broker_arguments(remove, DEFAULT_CONFIG)
    add_logging_arguments(remove)
    for command in (show, run, recorder, remove):
        command.add_argument("--models", help="models folder (overrides [collector] models_dir)")
    return parser


def load(args: argparse.Namespace) -> CollectorSettings:
    overrides = {"collector.models_dir": args.models,
                 "collector.share_group": getattr(args, "share", None),
                 "collector.partition": getattr(args, "partition", None),
                 "collector.ha_discovery": getattr(args, "ha_discovery", None),
                 "collector.state_path": getattr(args, "state", None)}
    return load_from_args(CollectorSettings, args, overrides)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    settings = load(args)
    if args.command == "config":
        print_settings(settings)
        return 0
    if args.command == "record":
        return record_command(args, settings)
    if args.command == "ha-remove":
        return ha_remove_command(args, settings)
    options = settings.collector
    inference = Inference.from_options(options)
    if not inference.forecasters and inference.spotter is None:
        raise ModelLoadError("no model could be loaded: " + "; ".join(inference.refused.values()))
    worker = Worker(settings, inference)
    stop_on_signals(worker.stop, "finishing the current message")
    watch = stop_on_thread_death(worker.stop)
    worker.start()
    try:
        worker.run(args.duration)
    finally:
        worker.close()
    return watch.exit_status()


def record_command(args: argparse.Namespace, settings: CollectorSettings) -> int:
    stop = threading.Event()
    stop_on_signals(stop.set)
    watch = stop_on_thread_death(stop.set)
    filters = args.topics or default_filters(args.predictions)
    with open_output(args.out) as out:
        count = record(settings.broker, out, filters, f"{settings.collector.id}-recorder", stop,
                       args.duration)
    print(f"recorded {count} messages to {args.out}")
    return watch.exit_status()


def ha_remove_command(args: argparse.Namespace, settings: CollectorSettings) -> int:
    options = settings.collector
    for node_id in args.node_ids:
        validate_id(node_id)
    # The models say which entities there are (a forecaster's sensors, a trigger per word).
    names = Inference(options.models_dir, options.forecast_models,
                      options.keyword_model).discovery_names()
    with MqttClient(settings.broker, f"{options.id}-admin", publish_availability=False) as client:
        handles = [client.publish(topic, payload, retain=True)
                   for node_id in args.node_ids
                   for topic, payload in removal_messages(node_id, options.id, *names)]
        if not all(handle.wait(10) for handle in handles):
            raise MqttError("the broker did not acknowledge every removal within 10 s")
    print(f"removed {len(args.node_ids)} node(s) from Home Assistant ({len(handles)} configs)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

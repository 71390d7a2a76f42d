"""``python -m collector``: the inference worker's command line."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
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
from tinyml_core.errors import ConfigError, ModelLoadError, MqttError
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import validate_id

from .enrollment.adapt import read_takes
from .enrollment.store import Enrollments, adaptation_models
from .homeassistant import removal_messages
from .inference import Inference
from .recorder import default_filters, open_output, record
from .settings import CollectorSettings, enrollment_path
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
    enroll = commands.add_parser(
        "enroll", help="teach a node's keyword model its household's voices",
        description="Fit NODE's own last layer of the keyword model to a person's takes: "
                    "DIR holds <word>/*.wav (each keyword said a few times; any sample rate) "
                    "and _unknown_/*.wav (their other speech). Several people add up; a "
                    "running collector with the same config picks the change up within a "
                    "few seconds. Only NODE answers with it; numpy and the TFLite runtime "
                    "only (no TensorFlow). A word of the household's own (--word) is "
                    "learned from <word>/*.wav the same way and answered as a keyword by "
                    "NODE only.")
    enroll.add_argument("node_id", metavar="NODE")
    enroll.add_argument("folder", nargs="?", type=Path, metavar="DIR",
                        help="the person's takes (<word>/*.wav, _unknown_/*.wav)")
    enroll.add_argument("--person", help="whose takes (default: the folder's name)")
    enroll.add_argument("--word", action="append", default=[], metavar="WORD",
                        help="a word of NODE's own, not one of the model's keywords: DIR's "
                             "WORD/*.wav teach it (repeatable)")
    enroll.add_argument("--list", action="store_true",
                        help="who is enrolled on NODE, and its own words")
    enroll.add_argument("--remove", metavar="NAME", help="forget NAME's takes on NODE")
    enroll.add_argument("--remove-word", metavar="WORD",
                        help="forget NODE's own WORD and everyone's takes of it")
    add_broker_arguments(enroll, DEFAULT_CONFIG)
    add_logging_arguments(enroll)
    for command in (show, run, recorder, remove, enroll):
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
    if args.command == "enroll":
        return enroll_command(args, settings)
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
    # The models say which entities there are (a forecaster's sensors, a trigger per word,
    # the node's own words too).
    inference = Inference(options.models_dir, options.forecast_models, options.keyword_model)
    inference.use_enrollments(enrollment_path(options))
    with MqttClient(settings.broker, f"{options.id}-admin", publish_availability=False) as client:
        handles = [client.publish(topic, payload, retain=True)
                   for node_id in args.node_ids
                   for topic, payload in removal_messages(
                       node_id, options.id, *inference.discovery_names(node_id))]
        if not all(handle.wait(10) for handle in handles):
            raise MqttError("the broker did not acknowledge every removal within 10 s")
    print(f"removed {len(args.node_ids)} node(s) from Home Assistant ({len(handles)} configs)")
    return 0


def enroll_command(args: argparse.Namespace, settings: CollectorSettings) -> int:
    options = settings.collector
    validate_id(args.node_id)
    path = enrollment_path(options)
    if path is None:
        raise ConfigError("enrollment_path is empty: this collector keeps no enrollments")
    if args.list:
        try:
            store = Enrollments.load(path)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None
        node = store.nodes.get(args.node_id)
        if node is None:
            print(f"{args.node_id}: nobody enrolled (it answers with the shipped model)")
            return 0
        print(f"{args.node_id}: {len(node.people)} people on {node.base_model} "
              f"{node.base_sha256[:8]} (model_version …{node.version})")
        if node.words:
            print(f"  its own words: {', '.join(node.words)}")
        for person in node.people.values():
            print(f"  {person.describe()}")
        return 0
    try:
        spotter, anchors = adaptation_models(options.models_dir, options.keyword_model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    removing = args.remove or args.remove_word
    if not removing and args.folder is None:
        raise ConfigError("give the folder of takes (or --list, --remove NAME, "
                          "--remove-word WORD)")
    started = time.perf_counter()
    try:
        takes = None
        if not removing:
            enrolled = Enrollments.load(path).nodes.get(args.node_id)
            known = enrolled.words if enrolled is not None else ()  # its own words so far
            takes = read_takes(args.folder, args.person or args.folder.resolve().name,
                               spotter.contract.keywords, [*known, *args.word])
            takes.new_words = [word for word in args.word if word not in known]
        # Held from reading the file to writing it: a running collector enrolling someone
        # over the broker meanwhile waits, and neither loses the other's person.
        with Enrollments.changing(path) as store:
            if takes is None:
                if args.remove_word:
                    left = store.remove_word(args.node_id, args.remove_word, spotter,
                                             anchors=anchors)
                    removed = f"the word {args.remove_word!r}"
                else:
                    left = store.remove(args.node_id, args.remove, spotter, anchors=anchors)
                    removed = args.remove
                done = (f"removed {removed} from {args.node_id}; "
                        + (f"{len(left.people)} people left" if left is not None
                           else "it answers with the shipped model again"))
            else:
                node = store.add(args.node_id, takes, spotter, anchors=anchors)
                own = f"; its own words: {', '.join(node.words)}" if node.words else ""
                words = len(takes.words)
                done = (f"enrolled {takes.person} on {args.node_id}: {takes.count} takes of "
                        f"{words} {'word' if words == 1 else 'words'}, {len(takes.speech)} "
                        "clips of other "
                        f"speech; {len(node.people)} people in all (model_version "
                        f"…{node.version}){own}")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(f"{done} ({time.perf_counter() - started:.1f} s; {path})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m node``: the Raspberry Pi daemon's command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from tinyml_core.errors import ConfigError
from tinyml_core.mqtt import MqttClient

from .settings import NodeSettings

DEFAULT_CONFIG = os.environ.get("TINYML_NODE_CONFIG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m node",
        description="Sensor node: publishes temperature/humidity readings and audio clips "
                    "over MQTT (see docs/protocol.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = add_config_command(commands, DEFAULT_CONFIG)

    run = commands.add_parser(
        "run", help="read the sensors and publish until stopped",
        description="Read the DHT11 and/or the microphone as configured, keep every message in "
                    "the on-disk spool until the broker acknowledges it, publish status/<node>. "
                    "Stops cleanly on SIGINT/SIGTERM.")
    add_broker_arguments(run, DEFAULT_CONFIG)
    run.add_argument("--duration", type=float, metavar="SECONDS",
                     help="stop after this long (default: run until stopped)")
    add_logging_arguments(run)

    replay = commands.add_parser(
        "replay", help="publish a recorded stream instead of reading sensors",
        description="Publish a recording of `python -m collector record` (JSON lines) or a "
                    "Jena-format climate CSV with its original timestamps and timing, then "
                    "clips from --audio-dir; or play a WAV file to the node's capture path "
                    "with --microphone. Ends at the end of the stream.")
    replay.add_argument("stream", nargs="?", type=Path, metavar="STREAM",
                        help="recording (.jsonl) or climate CSV (.csv)")
    replay.add_argument("--audio-dir", type=Path, metavar="DIR",
                        help="folder of <word>/*.wav files to publish as clips after STREAM")
    replay.add_argument("--microphone", type=Path, metavar="FILE.wav",
                        help="a recording of any length in the place of the microphone: cut "
                             "into sound events exactly as [audio] says and published as the "
                             "node would (16-bit PCM, 4-96 kHz; channels are mixed down)")
    replay.add_argument("--start-time", type=float, metavar="EPOCH",
                        help="the time of the first message (default: the stream's own times; "
                             "--microphone: now); the rest keep their distance from it")
    replay.add_argument("--speed", type=float, default=1.0, metavar="X",
                        help="time scale: 60 plays an hour in a minute; 0: as fast as the "
                             "broker acknowledges (default: 1)")
    add_broker_arguments(replay, DEFAULT_CONFIG)
    add_logging_arguments(replay)

    enroll = commands.add_parser(
        "enroll", help="record a person's keyword takes at the node's microphone",
        description="Standing at the node's microphone, a person is asked to say each keyword "
                    "--takes times, then once each word that sounds like one (off, on, yeah, "
                    "...), then to read a short text aloud; each take is checked as it is "
                    "recorded (too quiet, clipped, no sound, more than one, too long) and "
                    "asked for again with the reason. Accepted takes are written at once to "
                    "--out (<word>/take-N.wav, _unknown_/like-<word>-N.wav, "
                    "_unknown_/speech-N.wav): Ctrl-C keeps them, and a second run adds to "
                    "them. Then the folder goes to the collector over the "
                    "broker, which teaches the node's keyword model that voice and answers "
                    "(or, where the collector runs: `python -m collector enroll NODE DIR`). "
                    "A node daemon running on this machine with the same config lends its "
                    "microphone meanwhile (its readings go on).")
    add_broker_arguments(enroll, DEFAULT_CONFIG)
    enroll.add_argument("--person", default=None, metavar="NAME",
                        help="whose voice (default: your login name)")
    enroll.add_argument("--takes", type=int, default=3, metavar="N",
                        help="takes per keyword (default: 3)")
    enroll.add_argument("--words", metavar="W1,W2,...",
                        help="the keywords to record (default: the shipped models' eight; "
                             "none with --word)")
    enroll.add_argument("--word", action="append", default=[], metavar="WORD",
                        help="a word of the household's own (e.g. lights): recorded like a "
                             "keyword, and learnt by the collector as one this node answers "
                             "(repeatable; with --send: DIR's WORD/*.wav are such takes)")
    enroll.add_argument("--soundalikes", metavar="W1,W2,...",
                        help="words that sound like a keyword, said once each and learnt as "
                             "not a keyword (default: those of the words recorded, e.g. off, "
                             "on, yeah, light, top, town, so; \"\": none)")
    enroll.add_argument("--speech-s", type=float, default=30.0, metavar="SECONDS",
                        help="how long to record ordinary speech; 0: none (default: 30)")
    enroll.add_argument("--out", type=Path, metavar="DIR",
                        help="where the takes go (default: takes/<person>)")
    enroll.add_argument("--no-send", action="store_true",
                        help="only record: do not send the takes to the collector")
    enroll.add_argument("--send", type=Path, metavar="DIR",
                        help="do not record: send the takes in DIR (<word>/*.wav) as one "
                             "enrollment of --person")
    enroll.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the collector's answer (default: 120)")
    enroll.add_argument("--microphone", type=Path, metavar="FILE.wav",
                        help="take the sound from a recording instead of the microphone (to try "
                             "it out, or with takes recorded elsewhere)")
    add_logging_arguments(enroll)

    spool = commands.add_parser("spool", help="show what waits in the spool and exit",
                                description="Print the spool's size and what the size cap "
                                            "has dropped so far.")
    spool.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                       help=f"TOML settings file (default: {DEFAULT_CONFIG or 'none'})")
    add_logging_arguments(spool)

    devices = commands.add_parser("devices", help="list the audio input devices and exit",
                                  description="List PyAudio's input devices with their index "
                                              "and native rate, for [audio] device_index.")
    add_logging_arguments(devices)

    for command in (show, run, replay, spool, enroll):
        command.add_argument("--node-id", help="node id (overrides [node] id)")
    return parser


def load(args: argparse.Namespace) -> NodeSettings:
    return load_from_args(NodeSettings, args, {"node.id": getattr(args, "node_id", None)})


def run_command(args: argparse.Namespace, settings: NodeSettings) -> int:
    from .daemon import Node
    from .loan import loan_for
    from .sources import open_climate_sensor, open_microphone

    climate = open_climate_sensor(settings.climate)
    # `node enroll` on this machine may borrow the microphone meanwhile (node/loan.py).
    microphone = open_microphone(settings.audio, loan_for(settings.node.spool_path))
    if climate is None and microphone is None:
        raise ConfigError("no source: set [climate] source = \"dht11\" and/or [audio] "
                          "source = \"microphone\" (or use `python -m node replay`)")
    node = Node(settings, climate=climate, microphone=microphone)
    stop_on_signals(node.stop)
    watch = stop_on_thread_death(node.stop)
    node.start()
    try:
        node.run(args.duration, settings.node.stats_interval_s)
    finally:
        node.close()
    return watch.exit_status()


def replay_command(args: argparse.Namespace, settings: NodeSettings) -> int:
    from .replay import load_stream, replay

    if args.speed < 0:
        raise ConfigError("--speed must be 0 (as fast as possible) or more")
    if args.microphone is not None:
        return microphone_replay_command(args, settings)
    if args.stream is None and args.audio_dir is None:
        raise ConfigError("give a STREAM to replay, --audio-dir, both, or --microphone FILE.wav")
    items, skipped = load_stream(args.stream, args.audio_dir, args.node_id, settings.node.id,
                                 args.start_time)
    if not items:
        print(f"nothing to replay ({skipped} non-sensor messages skipped)")
        return 0
    stop = threading.Event()
    stop_on_signals(stop.set)
    watch = stop_on_thread_death(stop.set)
    span = items[-1].at - items[0].at
    pace = "as fast as possible" if args.speed == 0 else \
        f"over {span / args.speed:.0f} s (x{args.speed:g})"
    print(f"replaying {len(items)} messages spanning {span:.0f} s of stream time {pace}")
    client_id = args.node_id or settings.node.id
    with MqttClient(settings.broker, f"{client_id}-replay", publish_availability=False) as client:
        result = replay(client, items, args.speed, stop=stop.is_set,
                        **flow_control(settings))
    print(f"{result.line()}{f', skipped {skipped} non-sensor messages' if skipped else ''}")
    return watch.exit_status() or (0 if result.complete else 1)


def microphone_replay_command(args: argparse.Namespace, settings: NodeSettings) -> int:
    from .replay import items_from_microphone, replay
    from .sources import capture

    if args.stream is not None or args.audio_dir is not None:
        raise ConfigError("--microphone replays one WAV file on its own: leave out STREAM and "
                          "--audio-dir")
    node_id = args.node_id or settings.node.id
    start = time.time() if args.start_time is None else args.start_time
    items = items_from_microphone(args.microphone, node_id, capture(settings.audio), start,
                                  args.speed)
    stop = threading.Event()
    stop_on_signals(stop.set)
    watch = stop_on_thread_death(stop.set)
    pace = "as fast as possible" if args.speed == 0 else f"at x{args.speed:g}"
    print(f"playing {args.microphone} to the node's capture path {pace} "
          f"(gate {settings.audio.gate_dbfs:g} dBFS)")
    with MqttClient(settings.broker, f"{node_id}-replay", publish_availability=False) as client, \
            contextlib.closing(items):  # stops the capture thread if the replay ends early
        # The file plays at its own pace in the capture thread: publish events as they come.
        result = replay(client, items, 0, stop=stop.is_set, **flow_control(settings))
    print(f"sound events: {result.line()}")
    return watch.exit_status() or (0 if result.complete else 1)


def flow_control(settings: NodeSettings) -> dict[str, Any]:
    """A replay paces and waits for confirmations as the node daemon does."""
    node = settings.node
    return {"rate_per_s": node.flush_rate_per_s, "confirm": node.confirm,
            "confirm_window": node.confirm_window}


def enroll_command(args: argparse.Namespace, settings: NodeSettings) -> int:
    import dataclasses
    import getpass

    from tinyml_core.messages import OWN_WORD_PATTERN, OWN_WORD_RULE

    from .enroll import DEFAULT_WORDS, SOUNDALIKES, enroll
    from .loan import loan_for
    from .microphone import Microphone, RecordedStream
    from .sources import capture, open_microphone

    new_words = [word.strip() for word in args.word if word.strip()]
    for word in new_words:
        if not OWN_WORD_PATTERN.fullmatch(word):
            raise ConfigError(f"--word {word!r}: a word of the household's own is "
                              f"{OWN_WORD_RULE}")
    default = "" if new_words else ",".join(DEFAULT_WORDS)
    words = [word.strip() for word in (args.words or default).split(",") if word.strip()]
    words += [word for word in new_words if word not in words]
    if not words or args.takes < 1:
        raise ConfigError("--words needs at least one word and --takes at least 1")
    soundalikes = ([word.strip() for word in args.soundalikes.split(",") if word.strip()]
                   if args.soundalikes is not None
                   else [alike for alike, like in SOUNDALIKES.items() if like in words])
    if set(soundalikes) & set(words):
        raise ConfigError(f"--soundalikes {', '.join(sorted(set(soundalikes) & set(words)))}: "
                          "a keyword cannot also be a word like one")
    person = args.person or getpass.getuser()
    node_id = args.node_id or settings.node.id
    if args.send is not None:
        return send_command(settings, node_id, person, args.send, args.wait, new_words)
    out = args.out or Path("takes") / person
    cutting = capture(settings.audio)
    with contextlib.ExitStack() as borrowed:
        if args.microphone is not None:
            from tinyml_core.recordings import read_wav

            rate, samples = read_wav(args.microphone)  # RecordingError: a clear message
            microphone = Microphone(RecordedStream(samples, rate, speed=0), rate, cutting,
                                    block_when_full=True, max_waiting=4)
            source = str(args.microphone)
        else:
            # A node daemon running here lends its microphone until the takes are recorded.
            if borrowed.enter_context(loan_for(settings.node.spool_path).borrowed()):
                print("the node daemon lends its microphone until the takes are recorded "
                      "(its readings go on)")
            opened = open_microphone(dataclasses.replace(settings.audio, source="microphone"))
            assert opened is not None
            microphone, source = opened, "the microphone"
        stop = threading.Event()
        stop_on_signals(stop.set)
        alike = f", then {len(soundalikes)} words like them once" if soundalikes else ""
        print(f"enrolling {person} from {source} into {out}: {args.takes} takes of "
              f"{', '.join(words)}{alike}, then {args.speech_s:g} s of reading (Ctrl-C keeps "
              "what is accepted)")
        microphone.start()
        try:
            result = enroll(microphone, out, words, args.takes, args.speech_s,
                            gate_dbfs=settings.audio.gate_dbfs, live=args.microphone is None,
                            stopped=stop.is_set, soundalikes=soundalikes)
        finally:
            microphone.stop()
    print(result.line())
    if not result.accepted:
        return 1
    if args.no_send or stop.is_set():
        flags = "".join(f" --word {word}" for word in new_words)
        print(f"next: python -m node enroll --send {out} --person {person}{flags}, or where "
              f"the collector runs: python -m collector enroll {node_id} {out} --person "
              f"{person}{flags}")
        return 0 if result.complete else 1
    sent = send_command(settings, node_id, person, out, args.wait, new_words)
    return sent or (0 if result.complete else 1)


def send_command(settings: NodeSettings, node_id: str, person: str, folder: Path,
                 wait_s: float, new_words: Sequence[str] = ()) -> int:
    """Send a folder of takes as one enrollment and print the collector's answer."""
    from tinyml_core.errors import MqttConnectError

    from .enroll import send_takes

    stop = threading.Event()
    stop_on_signals(stop.set)
    flags = "".join(f" --word {word}" for word in new_words)
    fallback = (f"the takes stay in {folder}: send them again with `python -m node enroll "
                f"--send {folder} --person {person}{flags}`, or where the collector runs: "
                f"`python -m collector enroll {node_id} {folder} --person {person}{flags}`")
    try:
        with MqttClient(settings.broker, f"{node_id}-enroll",
                        publish_availability=False) as client:
            result = send_takes(client, node_id, person, folder, wait_s, stopped=stop.is_set,
                                new_words=new_words)
    except MqttConnectError as error:
        print(f"not sent: {error}; {fallback}")
        return 1
    if result is None:
        print(f"no answer from a collector within {wait_s:g} s (is one running, with "
              f"enrollment_path set and an ACL that lets it read enroll/#?); {fallback}")
        return 1
    if not result.enrolled:
        print(f"{result.collector_id} did not enroll {person}: {result.reason}")
        return 1
    people = f"{result.people} {'person' if result.people == 1 else 'people'}"
    print(f"{result.collector_id}: {result.reason}; {people} enrolled on {node_id} "
          f"(model_version {result.model_version}, adapted in {result.seconds:.1f} s)")
    return 0


def spool_command(settings: NodeSettings) -> int:
    from .spool import Spool

    path = Path(settings.node.spool_path)
    if not path.exists():
        print(f"{path}: no spool yet (nothing waiting)")
        return 0
    with Spool(path, int(settings.node.spool_max_mb * 1e6)) as spool:
        began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(spool.created))
        print(f"{path}: {spool.stats().line()}; numbering {spool.spool_id} since {began}")
    return 0


def devices_command() -> int:
    from .microphone import input_devices

    for index, name, rate in input_devices():
        print(f"{index:>3}  {rate:>6.0f} Hz  {name}")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    if args.command == "devices":
        return devices_command()
    settings = load(args)
    if args.command == "config":
        print_settings(settings)
        return 0
    if args.command == "run":
        return run_command(args, settings)
    if args.command == "replay":
        return replay_command(args, settings)
    if args.command == "enroll":
        return enroll_command(args, settings)
    return spool_command(settings)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

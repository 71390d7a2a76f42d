"""``python -m demo``: the system end to end on the bundled sample data.

Starts a private broker (Mosquitto when installed, else the embedded amqtt broker) unless
``--broker`` names one, starts the collector with the shipped models, replays the bundled
readings and clips as a node would publish them, and prints what a subscriber to the whole
protocol sees (readings, forecasts, keywords), then a summary. The web dashboard runs beside
it (its address is printed); it ends by itself, or with ``--keep`` stays up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from collector.inference import Inference
from collector.settings import CollectorOptions, CollectorSettings
from collector.worker import Worker
from dashboard.server import Dashboard
from dashboard.settings import DashboardOptions, DashboardSettings
from node.enroll import send_takes
from node.replay import ReplayItem, ReplayResult, load_stream, replay
from tinyml_core.broker import EmbeddedBroker, LocalMosquitto, start_private_broker
from tinyml_core.cli import (
    add_logging_arguments,
    host_port,
    run_main,
    setup_logging,
    stop_on_signals,
)
from tinyml_core.config import BrokerConfig
from tinyml_core.errors import PayloadError
from tinyml_core.messages import (
    UNKNOWN_LABEL,
    AudioClip,
    Availability,
    ClimateReading,
    ErrorRecord,
    Forecast,
    KeywordResult,
    decode_message,
)
from tinyml_core.mqtt import InboundMessage, MqttClient
from tinyml_core.recordings import read_wav
from tinyml_core.topics import (
    ERRORS_ROOT,
    PREDICTIONS_ROOT,
    SENSORS_ROOT,
    STATUS_ROOT,
    PredictionKind,
    audio_topic,
    prediction_topic,
)

log = logging.getLogger("tinyml.demo")
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MODELS = Path(__file__).resolve().parent.parent / "models"
READINGS_SHOWN_EVERY = 12  # one line per two hours of 10-minute readings keeps the output short


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run the system end to end on the bundled sample data and print what "
                    "crosses the broker.",
    )
    parser.add_argument("--broker", type=host_port, metavar="HOST:PORT",
                        help="use this broker instead of starting a private one")
    parser.add_argument("--embedded-broker", action="store_true",
                        help="use the embedded Python broker even when Mosquitto is installed")
    parser.add_argument("--samples", type=Path, default=SAMPLES,
                        help="folder with climate/*.csv and speech/<word>/*.wav "
                             "(default: the bundled samples)")
    parser.add_argument("--node-id", default="demo-node", help="id the replayed node uses")
    parser.add_argument("--dashboard", default="127.0.0.1:8080", metavar="HOST:PORT",
                        help="where the web dashboard listens (default 127.0.0.1:8080; a free "
                             "port when that one is taken)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the broker, collector and dashboard running after the replay, "
                             "until Ctrl-C, to look around")
    parser.add_argument("--speed", type=float, default=200_000.0,
                        help="replay time scale (default 200000: a 10-minute reading every "
                             "3 ms; 0: as fast as the broker acknowledges)")
    add_logging_arguments(parser)
    parser.set_defaults(quiet=1)  # connection chatter only with -v
    return parser


def load_sample(samples: Path, node_id: str) -> tuple[list[ReplayItem], dict[float, str]]:
    """The bundled readings, then one clip per sample WAV, as ``python -m node replay`` sends
    them; also the word spoken in each clip, by the clip's timestamp, for display."""
    csv_files = sorted((samples / "climate").glob("*.csv"))
    items, _ = load_stream(csv_files[0] if csv_files else None, samples / "speech", node_id,
                           node_id)
    # _unknown_/ (other words) and _background_noise_/ hold what is none of the keywords.
    return items, {item.at: UNKNOWN_LABEL if item.label.startswith("_") else item.label
                   for item in items if item.label}


def said(spoken: str | None) -> str:
    if spoken == UNKNOWN_LABEL:
        return "the sample is no keyword: another word or a noise"
    return f"the sample says '{spoken}'"


def describe(inbound: InboundMessage, counts: Counter[str], words: dict[float, str]
             ) -> str | None:
    """One readable line per message, or None to keep the output short."""
    try:
        message = decode_message(inbound.topic, inbound.payload)
    except PayloadError as error:
        counts["undecodable"] += 1
        return f"{inbound.topic:<30} undecodable: {error}"
    root = inbound.topic.split("/", 1)[0]
    counts[root] += 1
    if isinstance(message, ClimateReading):
        if message.seq % READINGS_SHOWN_EVERY:
            return None
        stamp = datetime.fromtimestamp(message.time, UTC).strftime("%Y-%m-%d %H:%M")
        return (f"{inbound.topic:<30} #{message.seq:<4} {stamp}  "
                f"T {message.temperature:6.2f} °C  RH {message.humidity:5.1f} %")
    if isinstance(message, AudioClip):
        spoken = words.get(message.time, "?")
        return (f"{inbound.topic:<30} #{message.seq:<4} clip {message.duration:.2f} s "
                f"at {message.sample_rate} Hz ({said(spoken)})")
    if isinstance(message, Forecast):
        counts[message.model] += 1
        if round(message.input_time / 600) % READINGS_SHOWN_EVERY:
            return None
        last = message.steps[-1]
        made_at = datetime.fromtimestamp(message.input_time, UTC).strftime("%Y-%m-%d %H:%M")
        ahead = round((last.time - message.input_time) / 60)
        return (f"{inbound.topic:<30} {message.model}: {made_at} +{ahead:<3} min "
                f"T {last.temperature:6.2f} °C  RH {last.humidity:5.1f} %")
    if isinstance(message, KeywordResult):
        # A word is timed at its window inside the clip: the clip is the last one before it.
        starts = [at for at in words if at <= message.input_time]
        spoken = words[max(starts)] if starts else None
        kind = "others" if spoken == UNKNOWN_LABEL else "keywords"
        counts[kind] += 1
        counts[f"{kind} right"] += message.label == spoken
        # For 'unknown', the word that came closest.
        closest, probability = message.closest
        why = f"closest '{closest}' {probability:.0%}" \
            if message.label == UNKNOWN_LABEL else f"{message.probability:.0%}"
        return (f"{inbound.topic:<30} {message.model}: '{message.label}' "
                f"({why}, {message.latency_ms:.2f} ms)"
                f"{'' if message.label == spoken else f'  ({said(spoken)})'}")
    if isinstance(message, ErrorRecord):
        return f"{inbound.topic:<30} rejected: {message.reason}"
    if isinstance(message, Availability):
        return f"{inbound.topic:<30} {message.value}"
    return None


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    items, words = load_sample(args.samples, args.node_id)
    print(f"sample: {len(items) - len(words)} readings and {len(words)} audio clips "
          f"from {args.samples}")

    broker: LocalMosquitto | EmbeddedBroker | None = None
    if args.broker:
        host, port = args.broker
        print(f"broker: {host}:{port} (given)")
    else:
        broker = start_private_broker(embedded=args.embedded_broker)
        host, port = broker.host, broker.port
        kind = "private Mosquitto" if isinstance(broker, LocalMosquitto) else "embedded amqtt"
        print(f"broker: {kind} on {host}:{port}")
    config = BrokerConfig(host=host, port=port, connect_timeout_s=10)
    try:
        return run_demo(config, args.node_id, items, words, args.speed,
                        dashboard_listen=args.dashboard, keep=args.keep, samples=args.samples)
    finally:
        if broker is not None:
            broker.stop()
            if isinstance(broker, LocalMosquitto):
                broker.cleanup()


def start_collector(config: BrokerConfig, models: Path, enrolled: Path
                    ) -> tuple[Worker, threading.Thread]:
    settings = CollectorSettings(broker=config,
                                 # Each demo starts afresh: no windows or enrollments kept
                                 # between runs.
                                 collector=CollectorOptions(id="demo-collector",
                                                            models_dir=str(models),
                                                            state_path="",
                                                            enrollment_path=str(enrolled)))
    worker = Worker(settings, Inference.from_options(settings.collector))
    worker.start()
    thread = threading.Thread(target=worker.run, name="demo-collector", daemon=True)
    thread.start()
    return worker, thread


def start_web_dashboard(config: BrokerConfig, listen: str) -> Dashboard:
    """The web dashboard on ``listen``, or on a free port of the same host when that is taken."""
    # The demo shows its own run: nothing kept from an earlier one.
    options = DashboardOptions(id="demo-web-dashboard", listen=listen, state_path="")
    try:
        web = Dashboard(DashboardSettings(broker=config, dashboard=options))
    except OSError:
        host = listen.rpartition(":")[0] or "127.0.0.1"
        web = Dashboard(DashboardSettings(broker=config, dashboard=dataclasses.replace(
            options, listen=f"{host}:0")))
    web.start()
    return web


def run_demo(config: BrokerConfig, node_id: str, items: list[ReplayItem],
             words: dict[float, str], speed: float, models: Path = MODELS,
             dashboard_listen: str = "127.0.0.1:8080", keep: bool = False,
             samples: Path = SAMPLES) -> int:
    counts: Counter[str] = Counter()
    web = start_web_dashboard(config, dashboard_listen)
    print(f"dashboard: {web.address} (the web page; --keep keeps it up after the replay)")
    with MqttClient(config, "demo-dashboard", publish_availability=False) as dashboard, \
            tempfile.TemporaryDirectory(prefix="tinyml-demo-") as scratch:
        for root in (SENSORS_ROOT, PREDICTIONS_ROOT, STATUS_ROOT, ERRORS_ROOT):
            dashboard.subscribe(f"{root}/#")
        collector, collector_thread = start_collector(config, models,
                                                      Path(scratch) / "enrolled.json")
        print(f"collector: {collector.models_line()}")
        node = MqttClient(config, node_id).connect()
        result = ReplayResult()

        def publish_all() -> None:
            nonlocal result
            result = replay(node, items, speed)
            node.close()

        publisher = threading.Thread(target=publish_all, name="demo-node")
        started = time.monotonic()
        publisher.start()
        print(f"\n{'topic':<30} what arrived: every clip and keyword, one reading and one "
              f"forecast in {READINGS_SHOWN_EVERY}\n{'':<30} (a forecast shows its last step: "
              "made from the readings up to that time, that many minutes ahead)")
        quiet_since = time.monotonic()
        while publisher.is_alive() or time.monotonic() - quiet_since < 1.0:
            inbound = dashboard.receive(timeout=0.2)
            if inbound is None:
                continue
            quiet_since = time.monotonic()
            line = describe(inbound, counts, words)
            if line:
                print(line, flush=True)
        elapsed = time.monotonic() - started
        enrolled = show_enrollment(config, node_id, collector, dashboard, samples)
        if keep:
            print(f"\nreplay done; broker, collector and dashboard ({web.address}) keep running: "
                  "Ctrl-C to stop", flush=True)
            stop = threading.Event()
            stop_on_signals(stop.set)
            stop.wait()
        collector.stop()
        collector_thread.join(timeout=5)
        collector.close()
    web.close()

    sensors = counts[SENSORS_ROOT]
    print(f"\nsummary: node published {result.sent} messages in {elapsed:.1f} s, broker "
          f"acknowledged {result.acknowledged}; this printout decoded {sensors} sensor messages, "
          f"{counts[PREDICTIONS_ROOT]} predictions, {counts[ERRORS_ROOT]} error records, "
          f"{counts['undecodable']} undecodable")
    forecasts = ", ".join(f"{counts[name]} from {name}" for name in ("forecast_a", "forecast_b"))
    print(f"collector: {forecasts}; keywords: {counts['keywords right']} of "
          f"{counts['keywords']} clips recognised as the word their sample says, "
          f"{counts['others right']} of {counts['others']} other words and noises answered "
          f"'{UNKNOWN_LABEL}'")
    lost = len(items) - sensors
    if lost or result.acknowledged != len(items):
        print(f"error: {lost} messages lost", file=sys.stderr)
        return 1
    return 0 if enrolled else 1


def show_enrollment(config: BrokerConfig, node_id: str, collector: Worker,
                    listener: MqttClient, samples: Path) -> bool:
    """A second speaker says "go" (answered ``unknown``), enrolls with one take of each word
    over the broker, as `python -m node enroll --send` does, and says it again; then a third
    teaches the node a word of its own ("happy", no keyword) from two takes."""
    lessons = (("sam", "go", ()), ("kim", "happy", ("happy",)))
    for person, word, new_words in lessons:
        takes, spoken = samples / "enroll" / person, samples / "enroll" / f"{person}-{word}.wav"
        if not takes.is_dir() or not spoken.is_file():
            print(f"\n(no takes of {person} in {samples / 'enroll'}: not shown)")
            continue
        if not teach(config, node_id, collector, listener, samples, person, word, new_words):
            return False
    return True


def teach(config: BrokerConfig, node_id: str, collector: Worker, listener: MqttClient,
          samples: Path, person: str, word: str, new_words: Sequence[str]) -> bool:
    """``person`` says ``word``; enrolls (``new_words``: as a word of the node's own); says it
    again: whether the enrolled node answered."""
    takes, spoken = samples / "enroll" / person, samples / "enroll" / f"{person}-{word}.wav"
    rate, audio = read_wav(spoken)
    with MqttClient(config, f"{node_id}-{person}", publish_availability=False) as node:

        said_at = [time.time()]

        def say() -> KeywordResult | None:
            # Said to the node's microphone (a sound event), each time seconds after the last:
            # words closer than a second are one utterance, answered once.
            said_at[0] = max(time.time(), said_at[0] + 5.0)
            book = collector.inference.confirmations  # the replay's numbering, carried on
            seq = (book.highest(node_id, "audio") or 0) + 1
            clip = AudioClip.from_samples(node_id, said_at[0], seq, rate, audio,
                                          book.current_spool(node_id, "audio"))
            node.publish(audio_topic(node_id), clip.encode()).wait(5)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                inbound = listener.receive(timeout=0.2)
                if inbound is not None and inbound.topic == prediction_topic(
                        node_id, PredictionKind.KEYWORD):
                    return KeywordResult.decode(inbound.payload)
            return None

        def shown(result: KeywordResult | None) -> str:
            if result is None:
                return "no answer"
            return (f"{result.label!r} (\"{word}\" {result.probabilities.get(word, 0.0):.2f}, "
                    f"model_version {result.model_version})")

        if new_words:
            print(f"\nteach it a word of its own: {person} says \"{word}\", no keyword "
                  f"({spoken.name})")
        else:
            print(f"\nteach it a voice: another speaker, {person}, says \"{word}\" "
                  f"({spoken.name})")
        before = say()
        print(f"  before enrolling: {shown(before)}")
        answer = send_takes(node, node_id, person, takes, 60.0, say=lambda line: None,
                            new_words=new_words)
        if answer is None or not answer.enrolled:
            print(f"  enrollment failed: {answer.reason if answer else 'no answer'}",
                  file=sys.stderr)
            return False
        flags = "".join(f" --word {new}" for new in new_words)
        print(f"  python -m node enroll --send {takes.relative_to(samples.parent)} --person "
              f"{person}{flags} -> {answer.collector_id}: {answer.reason} "
              f"({answer.seconds:.1f} s)")
        version = answer.model_version
        after = None
        deadline = time.monotonic() + 10  # the collector reads its enrollment file every 2 s
        while time.monotonic() < deadline:
            after = say()
            if after is not None and after.model_version == version:
                break
            time.sleep(0.5)
        print(f"  after enrolling:  {shown(after)}")
    return after is not None and after.model_version == version


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

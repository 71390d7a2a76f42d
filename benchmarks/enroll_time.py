"""How long enrolling a household takes, on the collector as users run it.

    .venv/bin/python benchmarks/enroll_time.py [--people 5] [--takes 3]

Five people (the speakers of data/mini_speech_commands with the most takes; a word a speaker
said fewer than ``--takes`` times is filled with other speakers' takes, which costs the same),
each with ``--takes`` takes of the eight keywords and four other words (data/negatives) as
their other speech, enrolled one after the other on one node:

- in process: ``Enrollments.add`` (what ``python -m collector enroll`` does), each person's
  time; the last one fits the node's layer over all five;
- over a private Mosquitto: ``python -m node enroll --send``'s path to a collector worker
  running at its defaults, from the first take sent to the collector's answer.

Without ../shared's data (extracted into data/) the bundled samples stand in for every person.
The target (issue 26): under 60 s for five people with 3 takes each on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.enrollment.adapt import read_takes  # noqa: E402
from collector.enrollment.store import Enrollments, adaptation_models  # noqa: E402
from collector.settings import CollectorOptions  # noqa: E402
from node.enroll import send_takes  # noqa: E402
from tests.collector_runner import start_worker, stop_worker  # noqa: E402
from tests.conftest import broker_config  # noqa: E402
from tinyml_core.broker import LocalMosquitto  # noqa: E402
from tinyml_core.messages import UNKNOWN_FOLDER  # noqa: E402
from tinyml_core.mqtt import MqttClient  # noqa: E402

WORDS = ("yes", "no", "up", "down", "left", "right", "go", "stop")
SPEECH_TAKES = 4
MODELS = REPO / "models"


def speaker(path: Path) -> str:
    return path.name.split("_")[0]


def household_folders(out: Path, people: int, takes: int) -> tuple[list[Path], str]:
    """One folder of takes per person, and where they came from."""
    words_root = REPO / "data" / "mini_speech_commands"
    if words_root.is_dir():
        others = sorted((REPO / "data" / "negatives" / "words").glob("*/*.wav"))
        source = "data/mini_speech_commands and data/negatives"
    else:
        words_root = REPO / "samples" / "speech"
        others = sorted((words_root / UNKNOWN_FOLDER).glob("*.wav"))
        source = "the bundled samples (no data/: every person says the same clips)"
    by_speaker: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for word in WORDS:
        for path in sorted((words_root / word).glob("*.wav")):
            by_speaker[speaker(path)][word].append(path)
    chosen = sorted(by_speaker, key=lambda s: -sum(len(v) for v in by_speaker[s].values()))
    chosen = chosen[:people] if len(chosen) >= people else [chosen[0]] * people
    pool = {word: [p for s in by_speaker for p in by_speaker[s][word]] for word in WORDS}
    folders = []
    for number, name in enumerate(chosen):
        folder = out / f"person{number + 1}"
        for word in WORDS:
            own = by_speaker[name][word][:takes]
            filler = [p for p in pool[word] if p not in own][number * takes:]
            (folder / word).mkdir(parents=True)
            for index, path in enumerate((own + filler)[:takes]):
                shutil.copy(path, folder / word / f"take-{index + 1}.wav")
        (folder / UNKNOWN_FOLDER).mkdir()
        mine = [p for p in others if speaker(p) == name] or others[number::people]
        for index, path in enumerate(mine[:SPEECH_TAKES]):
            shutil.copy(path, folder / UNKNOWN_FOLDER / f"speech-{index + 1}.wav")
        folders.append(folder)
    return folders, source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=5)
    parser.add_argument("--takes", type=int, default=3, help="takes per keyword per person")
    parser.add_argument("--model", default=CollectorOptions().keyword_model,
                        help="keyword model (default: the collector's, %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        folders, source = household_folders(scratch / "takes", args.people, args.takes)
        print(f"{args.people} people, {args.takes} takes of each of {len(WORDS)} words and "
              f"{SPEECH_TAKES} other words each, from {source}")
        spotter, anchors = adaptation_models(MODELS, args.model)
        store = Enrollments(scratch / "in-process.json")
        total = 0.0
        for folder in folders:
            takes = read_takes(folder, folder.name, spotter.contract.keywords)
            started = time.perf_counter()
            node = store.add("kitchen", takes, spotter, anchors=anchors)
            seconds = time.perf_counter() - started
            total += seconds
            print(f"  in process: {folder.name} ({takes.count} takes, {len(takes.speech)} "
                  f"speech) enrolled in {seconds:.2f} s; {len(node.people)} "
                  f"{'person' if len(node.people) == 1 else 'people'} on the node")
        print(f"in process: {args.people} people in {total:.1f} s")

        broker = LocalMosquitto(scratch / "broker").start()
        worker, thread = start_worker(broker, "collector-1", forecasts=(),
                                      keyword_model=args.model,
                                      enrollment_path=str(scratch / "enrolled.json"))
        client = MqttClient(broker_config(broker, connect_timeout_s=10.0), "kitchen-enroll",
                            publish_availability=False).connect()
        total = 0.0
        try:
            for folder in folders:
                started = time.perf_counter()
                result = send_takes(client, "kitchen", folder.name, folder, 120.0,
                                    say=lambda line: None)
                seconds = time.perf_counter() - started
                total += seconds
                if result is None or not result.enrolled:
                    print(f"  over the broker: {folder.name} NOT enrolled: "
                          f"{result.reason if result else 'no answer in 120 s'}")
                    return 1
                print(f"  over the broker: {folder.name} answered in {seconds:.2f} s (adapting "
                      f"{result.seconds:.2f} s); {result.people} "
                      f"{'person' if result.people == 1 else 'people'} on the node")
        finally:
            client.close()
            stop_worker(worker, thread)
            broker.stop()
        print(f"over the broker: {args.people} people in {total:.1f} s, the first take sent "
              f"to each answer (target: under 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A node's burst through a stock Mosquitto, repeated: does every message get its answer?

    .venv/bin/python benchmarks/flow_control.py [--repeat 10] [--readings 5000] [--events 2500]
        [--broker stock|project]

Each round starts a fresh Mosquitto (``stock``: no project config, as Debian and Home
Assistant's add-on ship it: 1000 queued messages per client; ``project``: with the queue and
Nagle settings of config/mosquitto/tinyml.conf), the collector at its defaults, and then:
- ``node replay --speed 0`` of ``--readings`` readings: how many were confirmed, how many full
  windows got their forecast (each should get exactly one per model);
- ``node replay --microphone --speed 0`` of a WAV holding ``--events`` words (the bundled sample
  clips at 8 kHz with quiet between, cut by the node's own capture path): how many sound events
  were sent, and how many got no answer or more than one.
It prints one line per round and a summary, with the time each replay took and the rate it
reached; a round with anything missing or doubled is a miss.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.replay import ReplayItem, items_from_microphone  # noqa: E402
from node.settings import AudioSource  # noqa: E402
from node.sources import capture  # noqa: E402
from tests.flow import (  # noqa: E402
    START,
    default_collector,
    expected_forecast_times,
    reading_items,
    replay_as_node,
)
from tinyml_core.broker import LocalMosquitto  # noqa: E402
from tinyml_core.frontend import resample  # noqa: E402
from tinyml_core.messages import AudioClip  # noqa: E402
from tinyml_core.recordings import read_wav, write_wav  # noqa: E402

RATE = 8_000
GAP_S = 0.8


def words_wav(path: Path, events: int) -> None:
    """``events`` sample words at 8 kHz, each after ``GAP_S`` of a quiet room; only the
    samples the node's capture hears as exactly one sound event (two are too quiet for its
    gate, a noise is cut in two), so that the WAV holds ``events`` of them."""
    clips = []
    for wav in sorted((REPO / "samples" / "speech").glob("*/*.wav")):
        rate, samples = read_wav(wav)
        audio = resample(samples.astype(np.float32), rate, RATE)
        alone = path.with_name("one-word.wav")
        quiet = np.zeros(int(GAP_S * RATE), np.float32)
        write_wav(alone, RATE, np.concatenate([quiet, audio, quiet, quiet]).round()
                  .astype(np.int16))
        if sum(1 for _ in items_from_microphone(alone, "probe", capture(AudioSource()),
                                                START, 0)) == 1:
            clips.append(audio)
        alone.unlink()
    noise = np.random.default_rng(0)
    parts = []
    for index in range(events):
        parts.append(noise.normal(0, 15, int(GAP_S * RATE)))
        word = clips[index % len(clips)]
        parts.append(word + noise.normal(0, 15, len(word)))
    parts.append(noise.normal(0, 15, RATE))
    audio = np.clip(np.concatenate(parts).round(), -32768, 32767).astype(np.int16)
    write_wav(path, RATE, audio)


def recorded(items: Iterator[ReplayItem], spans: list[tuple[float, float]]) -> Iterator[ReplayItem]:
    """Passes the events on, noting each one's time span."""
    for item in items:
        clip = AudioClip.decode(item.payload)
        spans.append((clip.time, clip.time + clip.duration))
        yield item


def one_round(stock: bool, readings: int, wav: Path, scratch: Path) -> tuple[bool, str]:
    broker = LocalMosquitto(scratch, stock=stock).start()
    try:
        with default_collector(broker) as (worker, published):
            started = time.monotonic()
            result = replay_as_node(broker, "pi-bench", reading_items("pi-bench", readings))
            reading_s = time.monotonic() - started
            expected = expected_forecast_times(readings)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not expected <= {
                    t for t, m in published.forecasts if m == "forecast_a"}:
                time.sleep(0.1)
            spans: list[tuple[float, float]] = []
            events = items_from_microphone(wav, "pi-bench", capture(AudioSource()), START, 0)
            started = time.monotonic()
            heard = replay_as_node(broker, "pi-bench", list(recorded(events, spans)))
            event_s = time.monotonic() - started
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(answers(published.keywords, spans)) < \
                    len(spans):
                time.sleep(0.1)
            answered = answers(published.keywords, spans)
            dropped = worker.inference.rate_limit.dropped if worker.inference.rate_limit else 0
            gaps = sum(g.missing for g in worker.inference.confirmations.gaps.values())
    finally:
        broker.stop()
    made = [t for t, m in published.forecasts if m == "forecast_a"]
    missing_windows = len(expected - set(made))
    doubled_windows = len(made) - len(set(made))
    unanswered = sum(1 for index in range(len(spans)) if answered.get(index, 0) == 0)
    doubled = len(published.answered_twice())
    ok = (result.complete and heard.complete and not missing_windows and not doubled_windows
          and not unanswered and not doubled)
    line = (f"readings: {result.line()}; {len(expected) - missing_windows}/{len(expected)} "
            f"windows forecast ({doubled_windows} twice) in {reading_s:.1f} s "
            f"({readings / reading_s:.0f}/s) | events: {heard.line()}; {len(spans) - unanswered}"
            f"/{len(spans)} answered ({doubled} results twice) in {event_s:.1f} s | "
            f"rate-limited {dropped}, missing in sequence {gaps}")
    return ok, line


def answers(results: list[tuple[float, str]], spans: list[tuple[float, float]]) -> dict[int, int]:
    """Results per event (by the event whose span holds the result's input time)."""
    starts = np.array([start for start, _ in spans])
    counts: dict[int, int] = {}
    for at, _ in results:
        index = int(np.searchsorted(starts, at, side="right")) - 1
        if index >= 0 and at <= spans[index][1]:
            counts[index] = counts.get(index, 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--readings", type=int, default=5000, help="readings per round")
    parser.add_argument("--events", type=int, default=2500, help="spoken words in the WAV")
    parser.add_argument("--broker", choices=("stock", "project"), default="stock",
                        help="Mosquitto's own defaults, or the project's queue settings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tinyml-flow-") as scratch:
        wav = Path(scratch) / "words.wav"
        words_wav(wav, args.events)
        print(f"{args.broker} Mosquitto, collector at its defaults; {args.readings} readings "
              f"and a {args.events}-word WAV per round", flush=True)
        misses = 0
        for round_ in range(1, args.repeat + 1):
            ok, line = one_round(args.broker == "stock", args.readings, wav,
                                 Path(scratch) / f"broker-{round_}")
            misses += not ok
            print(f"round {round_}: {'ok  ' if ok else 'MISS'} {line}", flush=True)
    print(f"{args.repeat - misses} of {args.repeat} rounds without a miss")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())

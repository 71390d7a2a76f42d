"""What each keyword model costs the collector per second of a microphone's sound events.

    .venv/bin/python benchmarks/kws_cost.py [--models kws_b kws_e] [--events 30]
        [--seconds 3] [--no-memory]

Side by side in one run (timings on a shared 2-core machine vary 2-3x between runs; the
ratio within one run holds): sound events of ``--seconds`` at the node's default 16 kHz
(bundled speech and room tone, not random numbers), scanned and decided exactly as the
collector does (tinyml_core.keywords.find_keywords: resampling, the front end once per
event, the model over every window every 0.1 s). Printed per second of audio: the whole
scan, the front end (MFCCs, or the pretrained embedding's two models) and the keyword
model alone; then the collector's resident memory with each model loaded (a ``collector
run`` process on a private Mosquitto, after its first answer), unless ``--no-memory``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinyml_core.broker import LocalMosquitto  # noqa: E402
from tinyml_core.config import BrokerConfig  # noqa: E402
from tinyml_core.frontend import resample, to_float  # noqa: E402
from tinyml_core.keywords import ScanSettings, find_keywords  # noqa: E402
from tinyml_core.messages import AudioClip  # noqa: E402
from tinyml_core.models import KeywordSpotter, load_keyword_spotter  # noqa: E402
from tinyml_core.mqtt import MqttClient  # noqa: E402
from tinyml_core.recordings import read_wav  # noqa: E402
from tinyml_core.topics import PredictionKind, audio_topic, prediction_topic  # noqa: E402

NODE_RATE = 16_000
SAMPLES = REPO / "samples" / "speech"


def events(count: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Sound events as a node sends them: bundled words over bundled room tone, int16."""
    rng = np.random.default_rng(seed)
    words = [resample(to_float(clip), rate, NODE_RATE) for rate, clip in
             (read_wav(path) for path in sorted(SAMPLES.glob("*/*.wav"))
              if path.parent.name != "_background_noise_")]
    noise = [resample(to_float(clip), rate, NODE_RATE) for rate, clip in
             (read_wav(path) for path in sorted((SAMPLES / "_background_noise_").glob("*.wav")))]
    length = int(seconds * NODE_RATE)
    out = []
    for _ in range(count):
        tone = noise[int(rng.integers(len(noise)))]
        start = int(rng.integers(0, max(1, len(tone) - length)))
        event = np.resize(tone[start:start + length], length) * 0.3
        word = words[int(rng.integers(len(words)))][:length]
        at = int(rng.integers(0, length - len(word) + 1))
        event[at:at + len(word)] += word
        out.append((np.clip(event, -1, 1) * 32767).astype(np.int16))
    return out


def per_second(spotter: KeywordSpotter, sounds: list[np.ndarray]) -> dict[str, float]:
    """Median ms per second of audio: the whole scan, the front end, the model."""
    settings = ScanSettings()
    find_keywords(spotter, sounds[0], NODE_RATE, settings)  # warm-up: first invokes allocate
    seconds = len(sounds[0]) / NODE_RATE
    totals, fronts, models = [], [], []
    for sound in sounds:
        started = time.perf_counter()
        _, scan = find_keywords(spotter, sound, NODE_RATE, settings)
        totals.append((time.perf_counter() - started) * 1000 / seconds)
        models.append(scan.inference_ms / seconds)
        started = time.perf_counter()
        spotter.windows(sound, NODE_RATE, settings.hop_s)
        fronts.append((time.perf_counter() - started) * 1000 / seconds)
    return {"scan": statistics.median(totals), "front_end": statistics.median(fronts),
            "model": statistics.median(models)}


def resident_kb(model: str, sound: np.ndarray) -> int:
    """VmRSS of ``collector run`` with only ``model`` loaded, after it answered a clip."""
    with tempfile.TemporaryDirectory() as scratch:
        broker = LocalMosquitto(Path(scratch) / "mosquitto").start()
        config = Path(scratch) / "collector.toml"
        config.write_text(f'[collector]\nid = "cost-{model}"\nforecast_models = []\n'
                          f'keyword_model = "{model}"\nstate_path = ""\nenrollment_path = ""\n')
        worker = subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "--config", str(config), "--broker",
             broker.address, "--models", str(REPO / "models"), "-q"], cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
        client = MqttClient(BrokerConfig(host=broker.host, port=broker.port), "cost-node",
                            publish_availability=False).connect()
        try:
            client.subscribe(prediction_topic("cost-node", PredictionKind.KEYWORD))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                clip = AudioClip.from_samples("cost-node", time.time(), 0, NODE_RATE, sound,
                                              spool="c0575c0575c0575c")
                client.publish(audio_topic("cost-node"), clip.encode())
                if client.receive(timeout=2.0) is not None:
                    break
            for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
            return 0
        finally:
            client.close()
            worker.terminate()
            worker.wait(timeout=10)
            broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["kws_b", "kws_e"],
                        help="keyword models to compare (default: kws_b kws_e)")
    parser.add_argument("--events", type=int, default=30, help="sound events (default 30)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each event (default 3 s, the node's longest at its "
                             "defaults)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the collector's resident memory")
    args = parser.parse_args()
    if args.events < 2 or args.seconds < 1:
        parser.error("--events must be at least 2 and --seconds at least 1")
    sounds = events(args.events, args.seconds)
    results = {name: per_second(load_keyword_spotter(REPO / "models", name), sounds)
               for name in args.models}
    print(f"per second of sound events ({args.events} events of {args.seconds:g} s at "
          f"{NODE_RATE} Hz, scanned every 0.1 s as the collector does), median ms:")
    print(f"{'model':<8} {'scan':>8} {'front end':>10} {'model':>8}")
    for name, result in results.items():
        print(f"{name:<8} {result['scan']:>8.2f} {result['front_end']:>10.2f} "
              f"{result['model']:>8.3f}")
    first = args.models[0]
    for name in args.models[1:]:
        print(f"{name} / {first}: {results[name]['scan'] / results[first]['scan']:.1f}x "
              "(same run)")
    if not args.no_memory:
        for name in args.models:
            print(f"collector with {name} loaded: {resident_kb(name, sounds[0]) / 1024:.0f} MB "
                  "resident")
    return 0


if __name__ == "__main__":
    sys.exit(main())

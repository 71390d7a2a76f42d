"""``python -m training.latency kws_b [--runs N]``: time the whole clip pipeline.

Also timed: one second through the node's capture before it (what a live microphone costs
end to end), and a 3-second sound event scanned with overlapping windows and decided, as
the collector answers one.

The course's method: one second of random audio at 48 kHz → resample to the model's rate →
MFCC → invoke; medians over N runs of the total and of the interpreter alone. Our pipeline
(tinyml_core's front end and loader, as the collector runs it) is timed beside the same
pipeline done with scipy.signal.resample_poly + tf.signal (eager, as in the course's
script) on the same interpreter, so the speed-up is measured in one run. Without
TensorFlow/scipy installed, only our pipeline is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.cli import add_logging_arguments, run_main, setup_logging
from tinyml_core.frontend import MfccParams
from tinyml_core.models import KeywordSpotter, load_keyword_spotter, runtime_name

from . import MODELS_DIR

INPUT_RATE = 48000
NODE_RATE = 16000  # the node's default capture rate
EVENT_SECONDS = 3.0  # the node's longest sound event at its defaults


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 4)


def time_ours(spotter: KeywordSpotter, clips: np.ndarray) -> tuple[float, float]:
    totals, inference = [], []
    for clip in clips:
        started = time.perf_counter()
        spotter.classify(clip, INPUT_RATE)
        totals.append(time.perf_counter() - started)
        inference.append(spotter.model.last_invoke_ms / 1000)
    return _median_ms(totals), _median_ms(inference)


def reference_pipeline(spotter: KeywordSpotter) -> Callable[[np.ndarray], np.ndarray]:
    """scipy + tf.signal, written as the course's latency script does it."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import scipy.signal
    import tensorflow as tf

    params = spotter.contract.front_end
    divisor = math.gcd(INPUT_RATE, params.sample_rate)
    up, down = params.sample_rate // divisor, INPUT_RATE // divisor
    mel = tf.signal.linear_to_mel_weight_matrix(
        params.num_mel_bins, params.frame_length // 2 + 1, params.sample_rate,
        params.lower_hz, params.upper_hz)
    mean, std = spotter.contract.mean, spotter.contract.std

    def run(clip: np.ndarray) -> np.ndarray:
        audio = scipy.signal.resample_poly(clip, up, down).astype(np.float32)
        audio = tf.convert_to_tensor(audio)
        stft = tf.signal.stft(audio, params.frame_length, params.frame_step,
                              fft_length=params.frame_length)
        log_mel = tf.math.log(tf.tensordot(tf.abs(stft), mel, 1) + 1e-6)
        mfcc = tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[..., :params.num_coefficients]
        features = (mfcc.numpy() - mean) / std
        return spotter.classify_features(features[None])

    return run


def time_reference(spotter: KeywordSpotter, clips: np.ndarray) -> float | None:
    """The course's pipeline (MFCC front ends only: the speech embedding has no reference
    in tf.signal)."""
    if not isinstance(spotter.contract.front_end, MfccParams):
        return None
    try:
        run = reference_pipeline(spotter)
    except ImportError:
        return None
    run(clips[0])  # first call builds TensorFlow's kernels
    totals = []
    for clip in clips:
        started = time.perf_counter()
        run(clip)
        totals.append(time.perf_counter() - started)
    return _median_ms(totals)


def time_event_scan(spotter: KeywordSpotter, runs: int, seed: int,
                    seconds: float = EVENT_SECONDS) -> float:
    """A sound event of ``seconds`` at the node's default rate, scanned and decided as the
    collector does (every window, every ``hop_s``)."""
    from tinyml_core.keywords import ScanSettings, find_keywords

    rng = np.random.default_rng(seed)
    events = (rng.uniform(-0.5, 0.5, (runs, int(seconds * NODE_RATE))) * 32767).astype(np.int16)
    settings = ScanSettings()
    find_keywords(spotter, events[0], NODE_RATE, settings)
    totals = []
    for event in events:
        started = time.perf_counter()
        find_keywords(spotter, event, NODE_RATE, settings)
        totals.append(time.perf_counter() - started)
    return _median_ms(totals)


def time_capture(runs: int, seed: int) -> float:
    """One second at the node's default rate through its capture (SoundEvents, 0.1 s reads):
    what the node spends before publishing."""
    from node.microphone import BLOCK_SECONDS, Capture, SoundEvents

    rng = np.random.default_rng(seed)
    block = int(BLOCK_SECONDS * NODE_RATE)
    audio = (rng.uniform(-0.5, 0.5, NODE_RATE) * 32767).astype(np.int16)
    events = SoundEvents(Capture(), NODE_RATE, 0.0)
    totals = []
    for _ in range(runs):
        started = time.perf_counter()
        for start in range(0, NODE_RATE, block):
            events.feed(audio[start:start + block])
        totals.append(time.perf_counter() - started)
    return _median_ms(totals)


def measure(models_dir: Path, name: str, runs: int = 100, seed: int = 0) -> dict[str, Any]:
    spotter = load_keyword_spotter(models_dir, name)
    clips = np.random.default_rng(seed).uniform(-1, 1, (runs, INPUT_RATE)).astype(np.float32)
    spotter.classify(clips[0], INPUT_RATE)  # warm-up: first invoke allocates
    total, inference = time_ours(spotter, clips)
    reference = time_reference(spotter, clips)
    capture = time_capture(runs, seed)
    return {"model": name, "runs": runs, "total_ms": total, "inference_ms": inference,
            "capture_ms": capture, "second_through_capture_ms": round(capture + total, 4),
            "event_scan_ms": time_event_scan(spotter, runs, seed),
            "reference_total_ms": reference,
            "ratio": round(reference / total, 1) if reference else None,
            "machine": f"{platform.machine()}, {platform.processor() or platform.system()}"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.latency",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("model", help="keyword model in the manifest, e.g. kws_b")
    parser.add_argument("--runs", type=int, default=100, help="clips to time (default 100)")
    parser.add_argument("--models", type=Path, default=MODELS_DIR,
                        help="folder with manifest.json (default: models/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--record", action="store_true",
                        help="store the result in the model's manifest entry and refresh "
                             "models/REPORT.md (the build does this too)")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = measure(args.models, args.model, args.runs)
    if args.record:
        from tinyml_core.models import read_manifest, write_manifest_entry

        from .report import write_report

        entry = read_manifest(args.models)[args.model]
        write_manifest_entry(args.models, args.model, entry | {"latency": result})
        write_report(args.models, {})
    if args.json:
        print(json.dumps({key: result[key] for key in
                          ("model", "runs", "total_ms", "inference_ms", "capture_ms",
                           "event_scan_ms", "reference_total_ms", "ratio")}))
        return 0
    print(f"{args.model}: median of {args.runs} runs, 1 s of random audio at 48 kHz")
    print(f"  ours (numpy front end + {runtime_name()}): total "
          f"{result['total_ms']:.3f} ms, inference {result['inference_ms']:.3f} ms")
    print(f"  with the node's capture first (1 s at {NODE_RATE} Hz in 0.1 s reads): "
          f"{result['second_through_capture_ms']:.3f} ms")
    print(f"  a {EVENT_SECONDS:g} s event at {NODE_RATE} Hz scanned every 0.1 s and decided, as "
          f"the collector does: {result['event_scan_ms']:.3f} ms")
    if result["reference_total_ms"] is None:
        print("  scipy + tf.signal: not measured (an MFCC front end only, with the training "
              "extra)")
    else:
        print(f"  scipy + tf.signal: total {result['reference_total_ms']:.3f} ms "
              f"→ ours is {result['ratio']:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

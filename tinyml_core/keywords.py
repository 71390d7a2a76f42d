"""From a sound event to keyword results: one per utterance, ``unknown`` when there is none.

A keyword model sees one second. A longer event is scanned with overlapping windows
(:meth:`tinyml_core.models.KeywordSpotter.scan`); this module decides what the windows say.
Each keyword's probability is averaged over ``smoothing`` consecutive windows (a word spoken
once lifts several neighbouring windows, a click lifts one); the strongest peak over
``threshold`` is a word, windows within ``refractory_s`` of it belong to the same utterance,
and the next peak is looked for among the rest. Without a threshold or smoothing of its own,
a scan uses the model's (its manifest's ``default_threshold`` and ``default_smoothing``,
chosen on validation streams). The
collector, the stream benchmark and ``training.evaluate`` share this rule, so the numbers
they print are what users get.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .messages import UNKNOWN_LABEL
from .models import DEFAULT_KEYWORD_SMOOTHING

if TYPE_CHECKING:
    from .models import KeywordSpotter, Scan


@dataclass(frozen=True)
class ScanSettings:
    hop_s: float = 0.1  # between window starts
    smoothing: int | None = None  # windows averaged per decision; None: the model's own
    threshold: float | None = None  # smoothed probability a word needs; None: the model's
    refractory_s: float = 1.0  # one utterance: no second word within this of the first

    def __post_init__(self) -> None:
        if not 0 < self.hop_s <= 1.0:
            raise ValueError(f"hop_s must be within (0, 1] s, not {self.hop_s}")
        if self.smoothing is not None and self.smoothing < 1:
            raise ValueError("smoothing must be at least one window")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError("threshold must be a probability (0-1)")
        if self.refractory_s < 0:
            raise ValueError("refractory_s cannot be negative")


@dataclass(frozen=True)
class Detection:
    """A word (or ``unknown``) found at ``offset_s`` into the event: the start of the window
    where its smoothed probability peaked; ``probabilities`` are that window's own."""

    label: str
    offset_s: float
    score: float
    probabilities: np.ndarray


def smoothed(probabilities: np.ndarray, windows: int) -> np.ndarray:
    """Centred moving average over ``windows`` rows (fewer at the edges)."""
    count = len(probabilities)
    if windows <= 1 or count == 1:
        return probabilities
    sums = np.vstack([np.zeros((1, probabilities.shape[1])),
                      np.cumsum(probabilities, axis=0, dtype=np.float64)])
    rows = np.arange(count)
    low = np.clip(rows - (windows - 1) // 2, 0, count)
    high = np.clip(rows + windows // 2 + 1, 0, count)
    averaged: np.ndarray = (sums[high] - sums[low]) / (high - low)[:, None]
    return averaged


def decide(offsets_s: np.ndarray, probabilities: np.ndarray, labels: tuple[str, ...],
           keywords: tuple[str, ...], settings: ScanSettings) -> list[Detection]:
    """The words in one scanned event, in time order; ``[unknown]`` when none is clear."""
    if settings.threshold is None:
        raise ValueError("decide() needs a threshold (find_keywords uses the model's)")
    columns = np.array([labels.index(word) for word in keywords])
    scores = smoothed(probabilities, settings.smoothing or DEFAULT_KEYWORD_SMOOTHING)[:, columns]
    best_word = scores.argmax(axis=1)
    best_score = scores.max(axis=1)
    open_windows = np.ones(len(scores), dtype=bool)
    found = []
    while open_windows.any():
        peak = int(np.flatnonzero(open_windows)[best_score[open_windows].argmax()])
        if best_score[peak] < settings.threshold:
            break
        found.append(Detection(keywords[best_word[peak]], float(offsets_s[peak]),
                               float(best_score[peak]), probabilities[peak]))
        open_windows &= np.abs(offsets_s - offsets_s[peak]) >= settings.refractory_s
    if not found:
        peak = int(best_score.argmax())
        return [Detection(UNKNOWN_LABEL, float(offsets_s[peak]), float(best_score[peak]),
                          probabilities[peak])]
    return sorted(found, key=lambda detection: detection.offset_s)


def smoothing_in_force(settings: ScanSettings, spotter: KeywordSpotter) -> int:
    """The settings' smoothing, or the model's own (its manifest's) when they set none."""
    if settings.smoothing is None:
        return spotter.contract.default_smoothing
    return settings.smoothing


def threshold_in_force(settings: ScanSettings, spotter: KeywordSpotter,
                       clip: bool = False) -> float:
    """The settings' threshold, or the model's own (its manifest's) when they set none: for a
    microphone's sound events, or (``clip``) for one utterance sent on its own."""
    if settings.threshold is None:
        contract = spotter.contract
        return contract.clip_threshold if clip else contract.default_threshold
    return settings.threshold


def find_keywords(spotter: KeywordSpotter, samples: np.ndarray, sample_rate: int,
                  settings: ScanSettings, clip: bool = False) -> tuple[list[Detection], Scan]:
    """Scan one event (int16 or float audio at any rate) and decide: the detections, and
    the scan they were decided from. ``clip``: one utterance sent on its own (an audio
    message's capture "clip"), decided with the model's clip threshold."""
    settings = replace(settings, threshold=threshold_in_force(settings, spotter, clip),
                       smoothing=smoothing_in_force(settings, spotter))
    scan = spotter.scan(samples, sample_rate, settings.hop_s)
    return decide(scan.offsets, scan.probabilities, spotter.labels, spotter.keywords,
                  settings), scan

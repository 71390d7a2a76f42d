"""Teaching a node's keyword model its household's voices, with numpy and the TFLite runtime.

A person's takes (each keyword said a few times, and some of their ordinary speech) are cut
into the model's one-second windows as the collector scans an event, a few shifted in time,
each take also varied in speed, level and noise; the model's embedding of each window (the
input of its last layer) is an example. A new last layer is fitted to them (softmax
cross-entropy, each word's windows and the ordinary speech as ``unknown``) beside the model's
anchors (its embeddings of windows of its own training data, training/anchors.py), and pulled
towards the shipped layer by an L2 penalty, so that what the takes do not show (noise, other
words, other voices) keeps the shipped model's answers. Everything before the last layer is
the shipped model: the front end and the threshold stay what they were.
benchmarks/kws_household.py measures it on households the model never heard.

A word of the node's own (``--word``), which the model does not know, is not a row of that
layer: its takes' windows are kept as templates of the model's input and matched there
(:func:`own_words`, tinyml_core.models.OwnWords); to the layer they are ``unknown``, so that
no keyword answers them. benchmarks/kws_new_word.py measures it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.frontend import block_levels_dbfs, resample, to_float
from tinyml_core.messages import OWN_WORD_PATTERN, OWN_WORD_RULE, UNKNOWN_FOLDER, UNKNOWN_LABEL
from tinyml_core.models import ClassifierHead, KeywordSpotter, OwnWords, Prototypes

Clip = tuple[int, np.ndarray]  # (sample rate, samples)

SHIFTS = (-2, -1, 0, 1, 2)  # windows either side of a take's peak (0.1 s hops): time shifts
PAD_S = 0.2  # quiet added either side of a take
SPEEDS = (0.9, 0.95, 1.05, 1.1)


@dataclass
class Takes:
    """What one person recorded: keyword takes by word, and ordinary speech."""

    person: str
    words: dict[str, list[Clip]] = field(default_factory=dict)
    speech: list[Clip] = field(default_factory=list)  # not a keyword: their ordinary talk
    new_words: list[str] = field(default_factory=list)  # of ``words``: for the node to learn

    @property
    def count(self) -> int:
        return sum(len(clips) for clips in self.words.values())


@dataclass(frozen=True)
class AdaptSettings:
    l2: float = 0.001  # pull towards the shipped layer (per weight, against the mean loss)
    takes_weight: float = 1.0  # the takes' share of the loss against the anchors'
    # As the model was trained (config/recipes.toml): hard targets would make the layer surer
    # of itself than the shipped one, and the shipped threshold would accept more.
    label_smoothing: float = 0.1
    # The int8 model's own logits cannot pass its output's range (often about 2.6): a float
    # layer may, and may then be surer than the shipped model ever is.
    clip_logits: bool = True
    steps: int = 300
    learning_rate: float = 0.05
    hop_s: float = 0.1
    # Each take also said a little faster or slower and in a little noise, this many times:
    # a person's next take differs from the last one in speed, room and level.
    variants: int = 8
    seed: int = 0
    # The takes as prototypes (tinyml_core.models.Prototypes): a window as close to one of a
    # word's takes as the person's next take usually is (cosine similarity 0.9, against
    # about 0.5 for other words) gets that word's logit raised by up to ``prototype_lift``;
    # every keyword is lowered by ``keyword_penalty``, so that the model's default
    # threshold then accepts what matches the household more readily and the rest less.
    # The anchors' keywords (other voices saying the words) lift a word too, less: without
    # them the penalty costs a household's guests, who did not enroll, a tenth of their words.
    # A window nearer to noise, other words or the household's other speech than to a take
    # lifts nothing (Prototypes.rivals). Chosen for the rooms-trained kws_b on the households
    # of speaker folds 0-1 (benchmarks/kws_household.py; docs/models.md).
    prototype_lift: float = 6.0
    prototype_floor: float = 0.75
    keyword_penalty: float = 4.0
    anchor_lift: float = 3.0
    anchor_floor: float = 0.7
    # Each word's takes also rival the other words' (Prototypes.exclusive): a window like
    # several words' takes (noise is like many) lifts none of them much. Without it, noise and
    # visitors' words became words on an enrolled node.
    exclusive: bool = True
    # A word of the node's own (tinyml_core.models.OwnWords) is accepted where a window is
    # this like one of its takes (cosine similarity of the pretrained embedding's frames; a
    # person's next take is about 0.8 like their last, other words by anyone 0.25 and 0.59
    # at most), its probability rising 40 logits per 1.0 of likeness beyond: steep, so that
    # a keyword a little like the word keeps its probability. Chosen for kws_e on 18
    # households (benchmarks/kws_new_word.py; docs/models.md).
    own_word_floor: float = 0.70
    own_word_slope: float = 40.0

    def __post_init__(self) -> None:
        for name in ("prototype_floor", "anchor_floor", "own_word_floor"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: a floor is a similarity in "
                                 "[0, 1)")


ADAPT = AdaptSettings()  # as `collector enroll` adapts (benchmarks/kws_household.py measures it)


def adapt_settings(entry: dict[str, Any]) -> AdaptSettings:
    """How to adapt this keyword model: :data:`ADAPT`, with what its manifest entry's
    ``enrollment.settings`` sets (chosen for that model by ``benchmarks/kws_household.py
    --record``: a pretrained embedding's likenesses are not kws_b's). ValueError for a
    setting that is not one or a value out of range."""
    chosen = (entry.get("enrollment") or {}).get("settings") or {}
    unknown = sorted(set(chosen) - {f.name for f in fields(AdaptSettings)})
    if unknown:
        raise ValueError(f"{entry.get('file', 'model')}: unknown enrollment settings "
                         f"{', '.join(unknown)}")
    try:
        return replace(ADAPT, **{name: type(getattr(ADAPT, name))(value)
                                 for name, value in chosen.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"enrollment settings {chosen}: {error}") from None


def variants(clip: Clip, count: int, rng: np.random.Generator) -> list[Clip]:
    """The take, and ``count`` variants: speed 0.9-1.1 (resampled), level -6..+6 dB, pink-ish
    noise 10-30 dB below it."""
    rate, samples = clip
    audio = to_float(samples)
    out = [clip]
    for _ in range(count):
        speed = float(rng.choice(SPEEDS))  # ratios the resampler takes in small steps
        varied = resample(audio, round(rate * speed), rate)
        level = np.sqrt(np.mean(np.square(varied)) + 1e-12)
        noise = np.cumsum(rng.normal(0, 1, len(varied))).astype(np.float32)
        noise -= np.convolve(noise, np.ones(64) / 64, mode="same")  # brown → pinkish
        noise *= level * 10 ** (-rng.uniform(10, 30) / 20) / (np.std(noise) + 1e-12)
        varied = (varied + noise) * 10 ** (rng.uniform(-6, 6) / 20)
        out.append((rate, np.clip(np.round(varied * 32768), -32768, 32767).astype(np.int16)))
    return out


def _take_windows(spotter: KeywordSpotter, word: str, clip: Clip, hop_s: float
                  ) -> tuple[np.ndarray, int]:
    """The windows of a take (padded with quiet) and the one where the word is: where the
    shipped model finds the word most, or for a word of the node's own, which it does not
    know, the loudest second."""
    rate, samples = clip
    # Quiet either side, so that a one-second take still gives windows shifted in time.
    pad = np.zeros(int(PAD_S * rate), dtype=samples.dtype)
    padded = np.concatenate([pad, samples, pad])
    offsets, windows = spotter.windows(padded, rate, hop_s)
    base = spotter.with_head(None)
    if word in base.labels:
        return windows, int(base.classify_features(windows)[:, base.labels.index(word)].argmax())
    audio = to_float(padded).astype(np.float64)
    energy = np.concatenate([[0.0], np.cumsum(audio * audio)])
    starts = np.minimum(np.round(offsets * rate).astype(int), len(audio))
    ends = np.minimum(starts + rate, len(audio))
    return windows, int((energy[ends] - energy[starts]).argmax())


def _around(windows: np.ndarray, peak: int) -> np.ndarray:
    """The window where the word is and its neighbours (:data:`SHIFTS`)."""
    return windows[sorted({min(len(windows) - 1, max(0, peak + shift)) for shift in SHIFTS})]


def speech_examples(spotter: KeywordSpotter, clip: Clip, hop_s: float = 0.1) -> np.ndarray:
    """Embeddings of every window of ordinary speech."""
    rate, samples = clip
    _, windows = spotter.windows(samples, rate, hop_s)
    return spotter.embed_features(windows)


@dataclass
class Examples:
    """What takes showed the model: its last layer's input for the keywords and other speech
    (with label indices), and for each of the node's own words, the embeddings of its takes'
    windows (``unknown`` to the last layer: no keyword may answer them) and its templates
    (:class:`~tinyml_core.models.OwnWords`, the model's input at each take's word)."""

    embeddings: np.ndarray  # [N, D]
    targets: np.ndarray  # [N]
    own: dict[str, tuple[np.ndarray, np.ndarray]]  # word → ([M, D], [K, frames, coeffs])


def takes_examples(spotter: KeywordSpotter, households: Iterable[Takes],
                   settings: AdaptSettings = ADAPT, words: Sequence[str] = ()) -> Examples:
    """Every take, each also varied (:func:`variants`), as :class:`Examples`; a take of a
    word that is none of the model's keywords nor of ``words`` is refused."""
    labels = spotter.contract.labels
    unknown = labels.index(UNKNOWN_LABEL)
    rng = np.random.default_rng(settings.seed)
    rows, targets = [], []
    own: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for takes in households:
        for word, clips in takes.words.items():
            if word not in spotter.contract.keywords and word not in words:
                raise ValueError(f"{word!r} is not a keyword of {spotter.name} nor a word of "
                                 "the node's own")
            for take in clips:
                for clip in variants(take, settings.variants, rng):
                    windows, peak = _take_windows(spotter, word, clip, settings.hop_s)
                    found = spotter.embed_features(_around(windows, peak))
                    if word in labels:
                        rows.append(found)
                        targets += [labels.index(word)] * len(found)
                    else:
                        embeddings, templates = own.setdefault(word, ([], []))
                        embeddings.append(found)
                        templates.append(windows[peak])
        for clip in takes.speech:
            found = speech_examples(spotter, clip, settings.hop_s)
            rows.append(found)
            targets += [unknown] * len(found)
    if not rows and not own:
        raise ValueError("no takes to adapt from")
    width = spotter.model.head.weights.shape[1] if spotter.model.head is not None else 0
    return Examples(
        np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32),
        np.array(targets, np.int64),
        {word: (np.concatenate(e).astype(np.float32), np.stack(t).astype(np.float32))
         for word, (e, t) in own.items()})


def examples(spotter: KeywordSpotter, households: Iterable[Takes],
             settings: AdaptSettings = ADAPT) -> tuple[np.ndarray, np.ndarray]:
    """The keyword takes and other speech as (embeddings [N, D], label indices [N])."""
    found = takes_examples(spotter, households, settings)
    return found.embeddings, found.targets


@dataclass(frozen=True)
class Anchors:
    """A generic sample the shipped model was trained on (embeddings and labels): what the
    household's layer must go on answering as before."""

    embeddings: np.ndarray
    targets: np.ndarray

    @classmethod
    def of_clips(cls, spotter: KeywordSpotter, clips: Sequence[Clip],
                 targets: Sequence[int]) -> Anchors:
        features = np.stack([spotter.features(samples, rate) for rate, samples in clips])
        return cls(spotter.embed_features(features), np.asarray(targets))


def _balanced(targets: np.ndarray, labels: int) -> np.ndarray:
    """Weights summing to 1 that give each label present the same share."""
    counts = np.bincount(targets, minlength=labels).astype(np.float64)
    present = counts > 0
    weights: np.ndarray = (1.0 / np.where(present, counts, 1.0))[targets] / present.sum()
    return weights


def fit_head(base: ClassifierHead, embeddings: np.ndarray, targets: np.ndarray,
             settings: AdaptSettings = ADAPT,
             anchors: Anchors | None = None) -> ClassifierHead:
    """A last layer for these examples, started from and pulled towards ``base`` (Adam on
    the class-balanced cross-entropy of the takes, ``settings.takes_weight`` times that of
    the anchors, plus ``l2`` times the squared distance to ``base``)."""
    labels = len(base.bias)
    sample_weight = _balanced(targets, labels)
    x = embeddings.astype(np.float64)
    if anchors is not None:
        sample_weight = np.concatenate([
            sample_weight * settings.takes_weight,
            _balanced(anchors.targets, labels)]) / (settings.takes_weight + 1)
        x = np.concatenate([x, anchors.embeddings.astype(np.float64)])
        targets = np.concatenate([targets, anchors.targets])
    one_hot = np.eye(labels)[targets] * (1 - settings.label_smoothing) \
        + settings.label_smoothing / labels
    w0, b0 = base.weights.astype(np.float64), base.bias.astype(np.float64)
    w, b = w0.copy(), b0.copy()
    moments = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    low, high = base.logit_range if settings.clip_logits else (-np.inf, np.inf)
    for step in range(1, settings.steps + 1):
        logits = x @ w.T + b
        # The clip the quantized model applies: no gradient through a clipped logit.
        inside = (logits > low) & (logits < high)
        logits = np.clip(logits, low, high)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad_logits = (p - one_hot) * sample_weight[:, None] * inside
        grad_w = grad_logits.T @ x + 2 * settings.l2 * (w - w0)
        grad_b = grad_logits.sum(axis=0) + 2 * settings.l2 * (b - b0)
        for index, (param, grad) in enumerate(((w, grad_w), (b, grad_b))):
            m, v = moments[2 * index], moments[2 * index + 1]
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= settings.learning_rate * (m / (1 - 0.9 ** step)) / (
                np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return ClassifierHead(w.astype(np.float32), b.astype(np.float32), (low, high))


def household_head(spotter: KeywordSpotter, embeddings: np.ndarray, targets: np.ndarray,
                   settings: AdaptSettings = ADAPT, anchors: Anchors | None = None,
                   own: OwnWords | None = None) -> ClassifierHead:
    """The node's last layer from its household's examples: fitted to them
    (:func:`fit_head`), with their keyword examples as prototypes, and the anchors' too;
    and the node's ``own`` words beside it."""
    if spotter.model.head is None:
        raise ValueError(f"{spotter.name}: load it with embedding=True to adapt it")
    head = fit_head(spotter.model.head, embeddings, targets, settings, anchors)
    return replace(head, prototypes=household_prototypes(spotter, embeddings, targets,
                                                         settings, anchors), own_words=own)


def own_words(spotter: KeywordSpotter, templates: dict[str, np.ndarray],
              settings: AdaptSettings = ADAPT) -> OwnWords | None:
    """The node's own words (in the order of ``templates``: word → [K, frames, coeffs]),
    accepted where a window is as like one of a word's takes as ``settings.own_word_floor``
    (at the model's default threshold)."""
    words = [word for word, found in templates.items() if len(found)]
    if not words:
        return None
    return OwnWords(tuple(words), np.concatenate([templates[w] for w in words]),
                    np.concatenate([np.full(len(templates[w]), i) for i, w in enumerate(words)]),
                    settings.own_word_floor, spotter.contract.default_threshold,
                    settings.own_word_slope)


def household_prototypes(spotter: KeywordSpotter, embeddings: np.ndarray, targets: np.ndarray,
                         settings: AdaptSettings = ADAPT, anchors: Anchors | None = None
                         ) -> tuple[Prototypes, ...]:
    """The household's keyword examples as prototypes, and the anchors' keywords (other
    voices), each with what is no keyword as rivals. Made again from the examples whenever
    they are loaded: nothing of it needs keeping."""
    # Centred on what the model usually sees, so that similarity is about the word, not
    # about every embedding being positive (they come out of a ReLU).
    center = (anchors.embeddings if anchors is not None else embeddings).mean(axis=0)
    keywords = [spotter.labels.index(word) for word in spotter.contract.keywords]
    # What is no keyword (the anchors' noise and other words, the household's own other
    # speech and own words): the prototypes' rivals, so that a take that also sounds like the
    # room lifts the word and not the room.
    not_words = embeddings[~np.isin(targets, keywords)]
    if anchors is not None:
        not_words = np.concatenate([not_words,
                                    anchors.embeddings[~np.isin(anchors.targets, keywords)]])
    prototypes = [Prototypes.of(embeddings, targets, keywords, center, settings.prototype_lift,
                                settings.prototype_floor, settings.keyword_penalty, not_words,
                                settings.exclusive)]
    if anchors is not None and settings.anchor_lift:
        prototypes.append(Prototypes.of(anchors.embeddings, anchors.targets, keywords, center,
                                        settings.anchor_lift, settings.anchor_floor, 0.0,
                                        not_words, settings.exclusive))
    return tuple(prototypes)


def adapt(spotter: KeywordSpotter, households: Sequence[Takes],
          settings: AdaptSettings = ADAPT, anchors: Anchors | None = None,
          words: Sequence[str] = ()) -> ClassifierHead:
    """The household's last layer for ``spotter`` (made with ``embedding=True``), with its
    own ``words`` (:func:`check_word`) as keywords too."""
    if spotter.model.head is None:
        raise ValueError(f"{spotter.name}: load it with embedding=True to adapt it")
    for word in words:
        check_word(word, spotter.contract.labels)
    unknown_words = {word for takes in households for word in takes.words} - set(
        spotter.contract.keywords) - set(words)
    if unknown_words:
        raise ValueError(f"not keywords of {spotter.name}: {', '.join(sorted(unknown_words))}")
    found = takes_examples(spotter, households, settings, words)
    x, y = found.embeddings, found.targets
    unknown = spotter.labels.index(UNKNOWN_LABEL)
    for embeddings, _ in found.own.values():  # no keyword may answer the node's own words
        x = np.concatenate([x, embeddings])
        y = np.concatenate([y, np.full(len(embeddings), unknown)])
    own = own_words(spotter, {word: found.own[word][1] for word in words if word in found.own},
                    settings)
    return household_head(spotter, x, y, settings, anchors, own)


def check_word(word: str, labels: Sequence[str]) -> str:
    """A word of the node's own must be a lower-case word that is none of the model's labels;
    ValueError saying why not."""
    if not OWN_WORD_PATTERN.fullmatch(word):
        raise ValueError(f"{word!r}: a word of a node's own is {OWN_WORD_RULE}")
    if word in labels:
        raise ValueError(f"{word!r} is already a label of the model ({', '.join(labels)})")
    return word


MAX_TAKE_S = 10.0
MIN_TAKE_S = 0.25
FULL_SCALE = 32768
CLIPPED_FRACTION = 0.001
QUIET_DBFS = -70.0  # a take whose loudest 50 ms stays below this is silence (nothing recorded)


def check_take(path: Path | str, rate: int, samples: np.ndarray) -> None:
    """A take must be a sound of a plausible length; ValueError naming the take otherwise."""
    seconds = len(samples) / rate if rate > 0 else 0.0
    if not 8_000 <= rate <= 48_000:
        raise ValueError(f"{path}: sampled at {rate} Hz; takes need 8-48 kHz")
    if not MIN_TAKE_S <= seconds <= MAX_TAKE_S:
        raise ValueError(f"{path}: {seconds:.2f} s long; a take is {MIN_TAKE_S}-{MAX_TAKE_S:g} s")
    loudest = float(block_levels_dbfs(samples, rate).max())
    if loudest < QUIET_DBFS:
        raise ValueError(f"{path}: silence (loudest {loudest:.0f} dBFS)")
    # As `node enroll` judges a take (node/enroll.py TakeRules): a clipped take teaches the
    # model the distortion, not the voice.
    clipped = float(np.mean(np.abs(to_float(samples)) >= (FULL_SCALE - 1) / FULL_SCALE))
    if clipped > CLIPPED_FRACTION:
        raise ValueError(f"{path}: clipped ({clipped:.1%} of the samples at full scale)")


def read_takes(folder: Path, person: str, keywords: Sequence[str],
               words: Sequence[str] = ()) -> Takes:
    """``<word>/*.wav`` takes and ``_unknown_/*.wav`` other speech of one person, at any rate
    (stereo is mixed down); ``words``: the node's own words, which may have takes too.
    ValueError with the reason for anything else."""
    from tinyml_core.recordings import RecordingError, read_wav

    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    takes = Takes(person)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name != UNKNOWN_FOLDER and sub.name not in keywords and sub.name not in words:
            raise ValueError(f"{sub}: not a keyword of the model ({', '.join(keywords)}) nor "
                             f"{UNKNOWN_FOLDER} (other speech); to teach the node a word of "
                             f"its own, name it: --word {sub.name}")
        for path in sorted(sub.glob("*.wav")):
            try:
                rate, samples = read_wav(path)
            except RecordingError as error:
                raise ValueError(str(error)) from None
            check_take(path, rate, samples)
            if sub.name == UNKNOWN_FOLDER:
                takes.speech.append((rate, samples))
            else:
                takes.words.setdefault(sub.name, []).append((rate, samples))
    if not takes.words:
        raise ValueError(f"{folder}: no takes (<word>/*.wav with a word in "
                         f"{', '.join([*keywords, *words])})")
    return takes

"""The enrolled nodes: each node's people, what their takes showed the model, and the last
layer fitted to all of them (collector/enrollment/adapt.py); kept in a state file
(``[collector] enrollment_path``) that ``python -m collector enroll`` changes and a running
collector reads again when it changes.

A person's examples (the model's embeddings of their takes, with their labels) are kept, not
their audio: enough to fit the node's layer again when someone is added or removed, and tied
to the model they were made with (a node enrolled on another kws_b is refused with the reason,
to be enrolled again).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.errors import TinyMLError
from tinyml_core.messages import OWN_WORD_PATTERN, UNKNOWN_LABEL
from tinyml_core.models import (
    ClassifierHead,
    KeywordSpotter,
    load_anchors,
    load_keyword_spotter,
    model_version,
)
from tinyml_core.statefile import changing, read_state_file, write_state_file
from tinyml_core.topics import validate_id

from .adapt import (
    ADAPT,
    AdaptSettings,
    Anchors,
    Takes,
    adapt_settings,
    check_word,
    fit_head,
    household_prototypes,
    own_words,
    takes_examples,
)

log = logging.getLogger(__name__)

FORMAT = "tinyml-enrolled"
VERSION = 1
MAX_PEOPLE = 20
MAX_NAME = 64
MAX_WORDS = 8  # of a node's own


@dataclass
class Person:
    name: str
    when: str  # ISO 8601, UTC
    sha256: str  # of the takes' audio, as they were read
    words: dict[str, int]  # takes per word
    speech_clips: int
    embeddings: np.ndarray  # [N, D] float32
    targets: np.ndarray  # [N] label indices
    # Takes of the node's own words: word → (embeddings [M, D], answered `unknown` by the
    # last layer; templates [K, frames, coefficients], tinyml_core.models.OwnWords).
    own: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def describe(self) -> str:
        takes = ", ".join(f"{word} {count}" for word, count in sorted(self.words.items()))
        return (f"{self.name}: {sum(self.words.values())} takes ({takes}), "
                f"{self.speech_clips} clips of other speech, enrolled {self.when}")


# What the prototypes are made with (AdaptSettings): kept with each node, so that a node
# answers as it was enrolled even after the defaults change.
PROTOTYPE_NUMBERS = ("prototype_lift", "prototype_floor", "keyword_penalty", "anchor_lift",
                     "anchor_floor")
OWN_WORD_NUMBERS = ("own_word_floor", "own_word_slope")  # files from before them: today's
PROTOTYPE_SETTINGS = (*PROTOTYPE_NUMBERS, *OWN_WORD_NUMBERS, "exclusive")


@dataclass
class EnrolledNode:
    node_id: str
    base_model: str
    base_sha256: str
    people: dict[str, Person] = field(default_factory=dict)
    layer: ClassifierHead | None = None  # the last layer fitted to everyone enrolled
    settings: AdaptSettings = ADAPT
    # Words of the node's own (``--word``), labelled after the model's labels in this order.
    words: tuple[str, ...] = ()

    def head(self, spotter: KeywordSpotter, anchors: Anchors | None) -> ClassifierHead:
        """The node's layer with its people's takes and ``anchors`` as prototypes, and its
        own words (made again from the examples kept: only the fitted layer is stored)."""
        assert self.layer is not None
        x, y = self.examples(spotter.labels.index(UNKNOWN_LABEL))
        templates = {word: np.concatenate([p.own[word][1] for p in self.people.values()
                                           if word in p.own]) for word in self.words}
        return replace(self.layer, prototypes=household_prototypes(
            spotter, x, y, self.settings, anchors),
            own_words=own_words(spotter, templates, self.settings))

    def examples(self, unknown: int) -> tuple[np.ndarray, np.ndarray]:
        """Everyone's examples for the last layer: their own words' as ``unknown``."""
        x = [p.embeddings for p in self.people.values()]
        y = [p.targets.astype(np.int64) for p in self.people.values()]
        for person in self.people.values():
            for embeddings, _ in person.own.values():
                x.append(embeddings)
                y.append(np.full(len(embeddings), unknown, np.int64))
        return np.concatenate(x), np.concatenate(y)

    @property
    def version(self) -> str:
        """What a keyword result names: the base model's version and this enrollment's."""
        digest = hashlib.sha256(self.base_sha256.encode())
        for name in sorted(self.people):
            digest.update(f"{name}:{self.people[name].sha256}".encode())
        if self.words:  # a word taken away changes what the node answers, not the takes
            digest.update(f"words:{','.join(self.words)}".encode())
        return f"+enrolled-{digest.hexdigest()[:8]}"


def takes_sha256(takes: Takes) -> str:
    digest = hashlib.sha256()
    for word in sorted(takes.words):
        for rate, samples in takes.words[word]:
            digest.update(f"{word}:{rate}:".encode() + np.ascontiguousarray(samples).tobytes())
    for rate, samples in takes.speech:
        digest.update(f"_speech:{rate}:".encode() + np.ascontiguousarray(samples).tobytes())
    return digest.hexdigest()


def _array(values: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(values)
    return {"dtype": data.dtype.str, "shape": list(data.shape),
            "data": base64.b64encode(data.tobytes()).decode()}


def _from_array(document: dict[str, Any], what: str) -> np.ndarray:
    try:
        dtype = np.dtype(document["dtype"])
        if dtype.kind not in "fiu":
            raise ValueError(f"dtype {dtype}")
        values = np.frombuffer(base64.b64decode(document["data"], validate=True), dtype=dtype)
        return values.reshape([int(d) for d in document["shape"]]).copy()
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{what}: not an array ({error})") from None


class Enrollments:
    """The file of enrolled nodes, read and written whole: about 0.5 MB a person with three
    takes of each word and half a minute of speech (1,370 examples of 128 float16 values, in
    base64), and the node's layer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes: dict[str, EnrolledNode] = {}

    @classmethod
    def load(cls, path: Path) -> Enrollments:
        """The enrollments in ``path`` (none when it does not exist); ValueError with the
        reason for a file that is not one, or is damaged."""
        store = cls(path)
        try:
            document = read_state_file(path, FORMAT, VERSION, "collector enrollment file")
        except FileNotFoundError:
            return store
        nodes = document.get("nodes")
        if not isinstance(nodes, dict):
            raise ValueError("no \"nodes\" table")
        for node_id, entry in nodes.items():
            store.nodes[node_id] = _node_from(node_id, entry)
        return store

    @classmethod
    @contextlib.contextmanager
    def changing(cls, path: Path) -> Iterator[Enrollments]:
        """The enrollments in ``path``, written back when the block ends without an error;
        whoever else changes them meanwhile (a running collector and `collector enroll`)
        waits, so that neither writes over a person the other added."""
        with changing(path):
            try:
                store = cls.load(path)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
            yield store
            store.save()

    def save(self) -> None:
        write_state_file(self.path, {"format": FORMAT, "version": VERSION, "nodes": {
            node_id: _node_document(node) for node_id, node in sorted(self.nodes.items())}})

    def add(self, node_id: str, takes: Takes, spotter: KeywordSpotter,
            settings: AdaptSettings | None = None, anchors: Anchors | None = None
            ) -> EnrolledNode:
        """Enroll (or enroll again) one person of ``node_id``; the node's layer is fitted again
        over everyone enrolled there (``settings``: the model's own, :func:`adapt_settings`).
        A take of a word that is no keyword must be of one of the node's own words, or of
        ``takes.new_words``, which it then learns (:func:`check_word`). Nothing changes when
        it fails."""
        validate_id(node_id)
        if not takes.person or len(takes.person) > MAX_NAME or not takes.person.isprintable():
            raise ValueError(f"a person's name is 1-{MAX_NAME} printable characters")
        if spotter.model.head is None:
            raise ValueError(f"{spotter.name}: load it with embedding=True to enroll")
        node = self.nodes.get(node_id)
        sha = str(spotter.entry.get("sha256", ""))
        if node is not None and (node.base_model != spotter.name or node.base_sha256 != sha):
            raise ValueError(f"{node_id} was enrolled on {node.base_model} "
                             f"{node.base_sha256[:8]}, not this {spotter.name} {sha[:8]}: "
                             f"remove its people and enroll them again")
        people = dict(node.people) if node is not None else {}
        if takes.person not in people and len(people) >= MAX_PEOPLE:
            raise ValueError(f"{node_id} has {MAX_PEOPLE} people enrolled already")
        if settings is None:
            settings = adapt_settings(spotter.entry)
        words = list(node.words) if node is not None else []
        for word in takes.new_words:
            if word not in words:
                check_word(word, spotter.contract.labels)
                if word not in takes.words:
                    raise ValueError(f"no takes of the new word {word!r}: it is learned from "
                                     f"its takes ({word}/*.wav)")
                words.append(word)
        if len(words) > MAX_WORDS:
            raise ValueError(f"{node_id} may have {MAX_WORDS} words of its own, not "
                             f"{len(words)} ({', '.join(words)})")
        strange = sorted(set(takes.words) - set(spotter.contract.keywords) - set(words))
        if strange:
            own = f" ({', '.join(words)})" if words else ""
            raise ValueError(f"{', '.join(map(repr, strange))} is not a keyword of "
                             f"{spotter.name} ({', '.join(spotter.contract.keywords)}) nor a "
                             f"word of {node_id}'s own{own}; to teach it a word of its own, "
                             f"name it: --word {strange[0]}")
        found = takes_examples(spotter, [takes], settings, words)
        people[takes.person] = Person(
            takes.person, datetime.now(UTC).isoformat(timespec="seconds"), takes_sha256(takes),
            {word: len(clips) for word, clips in takes.words.items()}, len(takes.speech),
            # Kept as float16, in memory as in the file: a node fitted again after a
            # restart answers exactly as before it.
            _half(found.embeddings), found.targets.astype(np.int16),
            {word: (_half(embeddings), _half(templates))
             for word, (embeddings, templates) in found.own.items()})
        # A person enrolled again without their takes of a word may leave it with none.
        words = [word for word in words if any(word in p.own for p in people.values())]
        fitted = EnrolledNode(node_id, spotter.name, sha, people, settings=settings,
                              words=tuple(words))
        fitted.layer = _fit(spotter, fitted, anchors)
        self.nodes[node_id] = fitted
        return fitted

    def remove(self, node_id: str, person: str, spotter: KeywordSpotter,
               settings: AdaptSettings | None = None, anchors: Anchors | None = None
               ) -> EnrolledNode | None:
        """Forget one person; the node's layer is fitted again over the others (or the node
        answers with the shipped layer again when none is left)."""
        node = self.nodes.get(node_id)
        if node is None or person not in node.people:
            known = ", ".join(sorted(node.people)) if node is not None else "nobody"
            raise ValueError(f"{person!r} is not enrolled on {node_id} ({known} is)")
        people = {name: p for name, p in node.people.items() if name != person}
        if not people:
            del self.nodes[node_id]
            return None
        if spotter.model.head is None:
            raise ValueError(f"{spotter.name}: load it with embedding=True")
        node.people = people
        # A word nobody left has takes of is no longer the node's.
        for word in [w for w in node.words if not any(w in p.words for p in people.values())]:
            _drop_word(node, word)
        node.settings = adapt_settings(spotter.entry) if settings is None else settings
        node.layer = _fit(spotter, node, anchors)
        return node

    def remove_word(self, node_id: str, word: str, spotter: KeywordSpotter,
                    settings: AdaptSettings | None = None, anchors: Anchors | None = None
                    ) -> EnrolledNode | None:
        """Forget one of the node's own words and every take of it; the layer is fitted again
        (a person left with no takes at all is forgotten too)."""
        node = self.nodes.get(node_id)
        if node is None or word not in node.words:
            own = ", ".join(node.words) if node is not None and node.words else "none"
            raise ValueError(f"{word!r} is not a word of {node_id}'s own (its own: {own})")
        _drop_word(node, word)
        node.people = {name: p for name, p in node.people.items() if p.words}
        if not node.people:
            del self.nodes[node_id]
            return None
        if spotter.model.head is None:
            raise ValueError(f"{spotter.name}: load it with embedding=True")
        node.settings = adapt_settings(spotter.entry) if settings is None else settings
        node.layer = _fit(spotter, node, anchors)
        return node


def _drop_word(node: EnrolledNode, word: str) -> None:
    """Take ``word`` and everyone's takes of it out of the node."""
    for person in node.people.values():
        person.own.pop(word, None)
        person.words.pop(word, None)
    node.words = tuple(w for w in node.words if w != word)


def _half(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).astype(np.float32)


def _fit(spotter: KeywordSpotter, node: EnrolledNode, anchors: Anchors | None
         ) -> ClassifierHead:
    assert spotter.model.head is not None
    x, y = node.examples(spotter.labels.index(UNKNOWN_LABEL))
    return fit_head(spotter.model.head, x, y, node.settings, anchors)


def _node_document(node: EnrolledNode) -> dict[str, Any]:
    assert node.layer is not None
    head: dict[str, Any] = {"weights": _array(node.layer.weights),
                            "bias": _array(node.layer.bias),
                            "logit_range": [float(v) for v in node.layer.logit_range]}
    return {"base_model": node.base_model, "base_sha256": node.base_sha256,
            "version": node.version, "head": head, "words": list(node.words),
            "prototypes": {name: getattr(node.settings, name) for name in PROTOTYPE_SETTINGS},
            "people": {name: {"when": p.when, "sha256": p.sha256, "words": p.words,
                              "speech_clips": p.speech_clips,
                              "embeddings": _array(p.embeddings.astype(np.float16)),
                              "targets": _array(p.targets),
                              "own": {word: {"embeddings": _array(e.astype(np.float16)),
                                             "templates": _array(t.astype(np.float16))}
                                      for word, (e, t) in sorted(p.own.items())}}
                       for name, p in sorted(node.people.items())}}


def _node_from(node_id: str, entry: Any) -> EnrolledNode:
    what = f"node {node_id!r}"
    try:
        validate_id(node_id)
        head = entry["head"]
        weights = _from_array(head["weights"], f"{what} weights").astype(np.float32)
        bias = _from_array(head["bias"], f"{what} bias").astype(np.float32)
        low, high = (float(v) for v in head["logit_range"])
        if weights.ndim != 2 or bias.shape != (weights.shape[0],) \
                or not np.isfinite(weights).all() or not np.isfinite(bias).all():
            raise ValueError(f"{what}: a layer of shape {weights.shape} with bias {bias.shape}")
        words = tuple(str(word) for word in entry.get("words", ()))
        node = EnrolledNode(node_id, str(entry["base_model"]), str(entry["base_sha256"]),
                            words=words)
        for name, person in entry["people"].items():
            embeddings = _from_array(person["embeddings"], f"{what} {name}").astype(np.float32)
            targets = _from_array(person["targets"], f"{what} {name}").astype(np.int16)
            if embeddings.ndim != 2 or embeddings.shape[1] != weights.shape[1] \
                    or targets.shape != (len(embeddings),) \
                    or not np.isfinite(embeddings).all() \
                    or not ((targets >= 0) & (targets < len(bias))).all():
                raise ValueError(f"{what} {name}: examples of shape {embeddings.shape} with "
                                 f"labels {targets.shape} do not fit its layer")
            own = {}
            for word, arrays in (person.get("own") or {}).items():
                if word not in words:
                    raise ValueError(f"{what} {name}: takes of {word!r}, not a word of the "
                                     "node's own")
                found = _from_array(arrays["embeddings"], f"{what} {name} {word}")
                shapes = _from_array(arrays["templates"], f"{what} {name} {word}")
                if found.ndim != 2 or found.shape[1] != weights.shape[1] or shapes.ndim != 3 \
                        or not np.isfinite(found).all() or not np.isfinite(shapes).all():
                    raise ValueError(f"{what} {name} {word}: examples of shape {found.shape} "
                                     f"and templates {shapes.shape} do not fit its layer")
                own[str(word)] = (found.astype(np.float32), shapes.astype(np.float32))
            node.people[name] = Person(
                name, str(person["when"]), str(person["sha256"]),
                {str(k): int(v) for k, v in person["words"].items()},
                int(person["speech_clips"]), embeddings, targets, own)
        if len(set(words)) != len(words) \
                or any(not OWN_WORD_PATTERN.fullmatch(word) for word in words):
            raise ValueError(f"{what}: words of its own {list(words)}")
        node.layer = ClassifierHead(weights, bias, (low, high))
        node.settings = _settings(entry.get("prototypes"), what)
        return node
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{what}: missing or malformed {error}") from None
    except TinyMLError as error:  # validate_id: not a node id
        raise ValueError(f"{what}: {error}") from None


def _settings(document: Any, what: str) -> AdaptSettings:
    """The prototype settings a node was enrolled with (older files: today's)."""
    if document is None or isinstance(document, list):  # a file that kept the prototypes
        return ADAPT
    values: dict[str, Any] = {name: float(document[name]) for name in PROTOTYPE_NUMBERS}
    values |= {name: float(document.get(name, getattr(ADAPT, name)))
               for name in OWN_WORD_NUMBERS}
    if not np.isfinite(list(values.values())).all():
        raise ValueError(f"{what}: prototype settings {values}")
    values["exclusive"] = document.get("exclusive", False)  # files from before it: as enrolled
    if not isinstance(values["exclusive"], bool):
        raise ValueError(f"{what}: prototype setting exclusive {values['exclusive']!r}")
    try:
        return replace(ADAPT, **values)
    except ValueError as error:  # AdaptSettings checks its floors
        raise ValueError(f"{what}: prototype settings {values}: {error}") from None


def enrolled_spotters(store: Enrollments, spotter: KeywordSpotter, anchors: Anchors | None
                      ) -> tuple[dict[str, KeywordSpotter], dict[str, str]]:
    """Per enrolled node, ``spotter`` answering with the node's layer (``spotter`` made with
    embedding=True, ``anchors`` its anchors); and why each node that cannot use it is left
    with the shipped layer."""
    own, refused = {}, {}
    sha = str(spotter.entry.get("sha256", ""))
    for node_id, node in store.nodes.items():
        if node.base_model != spotter.name or node.base_sha256 != sha:
            refused[node_id] = (f"{node_id} was enrolled on {node.base_model} "
                                f"{node.base_sha256[:8]}, this collector runs {spotter.name} "
                                f"{sha[:8]}: enroll its people again")
            continue
        try:
            own[node_id] = spotter.with_head(node.head(spotter, anchors))
        except Exception as error:  # a layer of another shape: ModelLoadError
            refused[node_id] = str(error)
    return own, refused


def version_of(spotter: KeywordSpotter, node: EnrolledNode | None) -> str:
    """A keyword result's model_version: the model's, and the node's enrollment if any."""
    return model_version(spotter.entry) + (node.version if node is not None else "")


def adaptation_models(models_dir: Path | str, name: str) -> tuple[KeywordSpotter, Anchors]:
    """The keyword model with its embedding, and its anchors: what enrolling needs.
    ModelLoadError or ValueError with the reason."""
    spotter = load_keyword_spotter(models_dir, name, embedding=True)
    shipped = load_anchors(models_dir, name)
    if shipped is None:
        raise ValueError(f"{name} has no anchors (its training data the node's layer is "
                         f"fitted beside): make them with `python -m training.anchors {name}`")
    return spotter, Anchors(*shipped)

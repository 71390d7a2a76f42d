"""The enrolled nodes: each node's people, what their takes showed the model, and the last
layer fitted to all of them (collector/enrollment.py); kept in a state file
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.errors import TinyMLError
from tinyml_core.models import (
    ClassifierHead,
    KeywordSpotter,
    Prototypes,
    load_anchors,
    load_keyword_spotter,
    model_version,
)
from tinyml_core.statefile import changing, read_state_file, write_state_file
from tinyml_core.topics import validate_id

from .enrollment import ADAPT, AdaptSettings, Anchors, Takes, examples, household_head

log = logging.getLogger(__name__)

FORMAT = "tinyml-enrolled"
VERSION = 1
MAX_PEOPLE = 20
MAX_NAME = 64


@dataclass
class Person:
    name: str
    when: str  # ISO 8601, UTC
    sha256: str  # of the takes' audio, as they were read
    words: dict[str, int]  # takes per word
    speech_clips: int
    embeddings: np.ndarray  # [N, D] float32
    targets: np.ndarray  # [N] label indices

    def describe(self) -> str:
        takes = ", ".join(f"{word} {count}" for word, count in sorted(self.words.items()))
        return (f"{self.name}: {sum(self.words.values())} takes ({takes}), "
                f"{self.speech_clips} clips of other speech, enrolled {self.when}")


@dataclass
class EnrolledNode:
    node_id: str
    base_model: str
    base_sha256: str
    people: dict[str, Person] = field(default_factory=dict)
    head: ClassifierHead | None = None

    @property
    def version(self) -> str:
        """What a keyword result names: the base model's version and this enrollment's."""
        digest = hashlib.sha256(self.base_sha256.encode())
        for name in sorted(self.people):
            digest.update(f"{name}:{self.people[name].sha256}".encode())
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
    """The file of enrolled nodes, read and written whole (it is small: ~100 kB a person)."""

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
            settings: AdaptSettings = ADAPT, anchors: Anchors | None = None) -> EnrolledNode:
        """Enroll (or enroll again) one person of ``node_id``; the node's layer is fitted again
        over everyone enrolled there. Nothing changes when it fails."""
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
        x, y = examples(spotter, [takes], settings)
        people[takes.person] = Person(
            takes.person, datetime.now(UTC).isoformat(timespec="seconds"), takes_sha256(takes),
            {word: len(clips) for word, clips in takes.words.items()}, len(takes.speech),
            x.astype(np.float32), y.astype(np.int16))
        fitted = EnrolledNode(node_id, spotter.name, sha, people)
        fitted.head = _fit(spotter, people, settings, anchors)
        self.nodes[node_id] = fitted
        return fitted

    def remove(self, node_id: str, person: str, spotter: KeywordSpotter,
               settings: AdaptSettings = ADAPT, anchors: Anchors | None = None
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
        node.head = _fit(spotter, people, settings, anchors)
        return node


def _fit(spotter: KeywordSpotter, people: dict[str, Person], settings: AdaptSettings,
         anchors: Anchors | None) -> ClassifierHead:
    x = np.concatenate([p.embeddings for p in people.values()])
    y = np.concatenate([p.targets for p in people.values()]).astype(np.int64)
    return household_head(spotter, x, y, settings, anchors)


def _node_document(node: EnrolledNode) -> dict[str, Any]:
    assert node.head is not None
    head: dict[str, Any] = {"weights": _array(node.head.weights), "bias": _array(node.head.bias),
                            "logit_range": [float(v) for v in node.head.logit_range]}
    head["prototypes"] = [_prototypes_document(p) for p in node.head.prototypes]
    return {"base_model": node.base_model, "base_sha256": node.base_sha256,
            "version": node.version, "head": head,
            "people": {name: {"when": p.when, "sha256": p.sha256, "words": p.words,
                              "speech_clips": p.speech_clips,
                              "embeddings": _array(p.embeddings), "targets": _array(p.targets)}
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
        node = EnrolledNode(node_id, str(entry["base_model"]), str(entry["base_sha256"]))
        for name, person in entry["people"].items():
            embeddings = _from_array(person["embeddings"], f"{what} {name}").astype(np.float32)
            targets = _from_array(person["targets"], f"{what} {name}").astype(np.int16)
            if embeddings.ndim != 2 or embeddings.shape[1] != weights.shape[1] \
                    or targets.shape != (len(embeddings),) \
                    or not np.isfinite(embeddings).all() \
                    or not ((targets >= 0) & (targets < len(bias))).all():
                raise ValueError(f"{what} {name}: examples of shape {embeddings.shape} with "
                                 f"labels {targets.shape} do not fit its layer")
            node.people[name] = Person(
                name, str(person["when"]), str(person["sha256"]),
                {str(k): int(v) for k, v in person["words"].items()},
                int(person["speech_clips"]), embeddings, targets)
        node.head = ClassifierHead(weights, bias, (low, high), tuple(
            _prototypes(document, weights.shape[1], len(bias), what)
            for document in head.get("prototypes", [])))
        return node
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{what}: missing or malformed {error}") from None
    except TinyMLError as error:  # validate_id: not a node id
        raise ValueError(f"{what}: {error}") from None


def _prototypes_document(prototypes: Prototypes) -> dict[str, Any]:
    """Prototypes with their vectors (float16: a similarity needs no more)."""
    return {"center": _array(prototypes.center), "keywords": [int(k) for k in prototypes.keywords],
            "lift": prototypes.lift, "floor": prototypes.floor,
            "keyword_penalty": prototypes.keyword_penalty,
            "vectors": _array(prototypes.vectors.astype(np.float16)),
            "labels": _array(prototypes.labels.astype(np.int16)),
            "rivals": None if prototypes.rivals is None
            else _array(prototypes.rivals.astype(np.float16))}


def _prototypes(document: Any, size: int, labels: int, what: str) -> Prototypes:
    center = _from_array(document["center"], f"{what} prototype center").astype(np.float32)
    vectors = _from_array(document["vectors"], f"{what} prototypes").astype(np.float32)
    targets = _from_array(document["labels"], f"{what} prototype labels").astype(np.int64)
    keywords = np.array([int(k) for k in document["keywords"]], np.int64)
    rivals = None if document.get("rivals") is None else _from_array(
        document["rivals"], f"{what} prototype rivals").astype(np.float32)
    if center.shape != (size,) or vectors.ndim != 2 or vectors.shape[1] != size \
            or targets.shape != (len(vectors),) or not np.isfinite(vectors).all() \
            or not np.isfinite(center).all() or (rivals is not None and (
                rivals.ndim != 2 or rivals.shape[1] != size or not np.isfinite(rivals).all())):
        raise ValueError(f"{what}: prototypes of shape {vectors.shape} with labels "
                         f"{targets.shape} and rivals "
                         f"{None if rivals is None else rivals.shape} for embeddings of {size}")
    if not np.isin(keywords, np.arange(labels)).all() or not np.isin(targets, keywords).all():
        raise ValueError(f"{what}: prototype keywords {keywords.tolist()} outside its {labels} "
                         "labels, or labels that are not among them")
    lift, floor, penalty = (float(document[key]) for key in ("lift", "floor", "keyword_penalty"))
    if not 0 <= floor < 1 or not np.isfinite([lift, penalty]).all():
        raise ValueError(f"{what}: prototype lift {lift}, floor {floor}, penalty {penalty}")
    order = np.argsort(targets, kind="stable")
    return Prototypes(center, vectors[order], targets[order], keywords, lift, floor, penalty,
                      rivals)


def enrolled_spotters(store: Enrollments, spotter: KeywordSpotter
                      ) -> tuple[dict[str, KeywordSpotter], dict[str, str]]:
    """Per enrolled node, ``spotter`` answering with the node's layer (``spotter`` made with
    embedding=True); and why each node that cannot use it is left with the shipped layer."""
    own, refused = {}, {}
    sha = str(spotter.entry.get("sha256", ""))
    for node_id, node in store.nodes.items():
        if node.base_model != spotter.name or node.base_sha256 != sha:
            refused[node_id] = (f"{node_id} was enrolled on {node.base_model} "
                                f"{node.base_sha256[:8]}, this collector runs {spotter.name} "
                                f"{sha[:8]}: enroll its people again")
            continue
        try:
            own[node_id] = spotter.with_head(node.head)
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

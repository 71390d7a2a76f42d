"""A node's own last layer (collector/enrollment.py) on the shipped kws_b and bundled clips:
the shipped layer read out of the model answers as the model does, and a layer fitted to a
person's takes answers their takes with their words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collector.enrollment import AdaptSettings, Anchors, Takes, adapt, examples, fit_head
from tests.conftest import REPO_ROOT
from tinyml_core.errors import ModelLoadError
from tinyml_core.models import ClassifierHead, KeywordSpotter, load_keyword_spotter
from tinyml_core.recordings import read_wav

MODELS = REPO_ROOT / "models"
SPEECH = REPO_ROOT / "samples" / "speech"
WORDS = ("stop", "up", "yes", "right", "left", "no", "down", "go")


@pytest.fixture(scope="module")
def spotter() -> KeywordSpotter:
    return load_keyword_spotter(MODELS, "kws_b", embedding=True)


def clips(folder: Path) -> list[tuple[int, np.ndarray]]:
    return [read_wav(path) for path in sorted(folder.glob("*.wav"))]


def test_the_shipped_layer_read_out_of_the_model_answers_as_the_model(
        spotter: KeywordSpotter) -> None:
    plain = load_keyword_spotter(MODELS, "kws_b")
    assert spotter.model.head is not None
    own = spotter.with_head(spotter.model.head)
    for folder in SPEECH.iterdir():
        for rate, samples in clips(folder):
            expected = plain.scan(samples, rate).probabilities
            # The model's softmax output is int8 (steps of 1/256): the float layer is within it.
            assert np.abs(own.scan(samples, rate).probabilities - expected).max() < 0.01
            assert np.abs(spotter.scan(samples, rate).probabilities - expected).max() < 1e-6


def test_a_layer_that_does_not_fit_or_a_model_without_embeddings_is_refused(
        spotter: KeywordSpotter) -> None:
    wrong = ClassifierHead(np.zeros((3, 128), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ModelLoadError, match="does not fit"):
        spotter.with_head(wrong)
    plain = load_keyword_spotter(MODELS, "kws_b")
    with pytest.raises(ModelLoadError, match="embedding=True"):
        plain.embed_features(np.zeros((1, *plain.model.input_shape[1:]), np.float32))
    assert spotter.model.head is not None
    with pytest.raises(ModelLoadError, match="does not fit"):
        plain.with_head(spotter.model.head)


def test_no_steps_leave_the_shipped_layer_as_it_is(spotter: KeywordSpotter) -> None:
    assert spotter.model.head is not None
    x, y = examples(spotter, [Takes("ann", {"yes": clips(SPEECH / "yes")})])
    same = fit_head(spotter.model.head, x, y, AdaptSettings(steps=0))
    assert np.array_equal(same.weights, spotter.model.head.weights)
    assert np.array_equal(same.bias, spotter.model.head.bias)


def test_a_persons_takes_are_answered_with_their_words_after_adapting(
        spotter: KeywordSpotter) -> None:
    # Every bundled keyword take as one person's enrollment, the other words as their speech.
    takes = Takes("ann", {word: clips(SPEECH / word) for word in WORDS},
                  clips(SPEECH / "_unknown_"))
    adapted = spotter.with_head(adapt(spotter, [takes]))
    for word in WORDS:
        for rate, samples in takes.words[word]:
            probabilities = adapted.classify(samples, rate)
            assert adapted.labels[int(probabilities.argmax())] == word
    for rate, samples in takes.speech:
        assert adapted.labels[int(adapted.classify(samples, rate).argmax())] == "unknown"


def test_anchors_keep_what_the_takes_do_not_show(spotter: KeywordSpotter) -> None:
    # Takes of one word only: the anchors (other words, answered as the shipped model does)
    # keep the layer from calling everything that word.
    base = spotter.model.head
    assert base is not None
    anchor_clips = [clip for word in WORDS if word != "yes" for clip in clips(SPEECH / word)]
    targets = [spotter.labels.index(word) for word in WORDS if word != "yes"
               for _ in clips(SPEECH / word)]
    anchors = Anchors.of_clips(spotter, anchor_clips, targets)
    settings = AdaptSettings(l2=0.0, steps=300)
    x, y = examples(spotter, [Takes("ann", {"yes": clips(SPEECH / "yes")})])
    with_anchors = spotter.with_head(fit_head(base, x, y, settings, anchors))
    kept = [with_anchors.labels[int(with_anchors.classify(s, r).argmax())]
            for r, s in anchor_clips]
    assert kept == [spotter.labels[t] for t in targets]


def test_words_that_are_not_keywords_are_refused(spotter: KeywordSpotter) -> None:
    with pytest.raises(ValueError, match="not keywords of kws_b: marvin"):
        adapt(spotter, [Takes("ann", {"marvin": clips(SPEECH / "_unknown_")})])
    plain = load_keyword_spotter(MODELS, "kws_b")
    with pytest.raises(ValueError, match="embedding=True"):
        adapt(plain, [Takes("ann", {"yes": clips(SPEECH / "yes")})])

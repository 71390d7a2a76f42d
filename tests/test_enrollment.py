"""A node's own last layer (collector/enrollment/adapt.py) on the shipped kws_b and bundled clips:
the shipped layer read out of the model answers as the model does, and a layer fitted to a
person's takes answers their takes with their words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collector.enrollment.adapt import AdaptSettings, Anchors, Takes, adapt, examples, fit_head
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


NOISE_LIKE = ("right", "122c5aa7_nohash_4.wav")  # kws_b hears 'silence' (0.46)


def test_a_persons_takes_are_answered_with_their_words_after_adapting(
        spotter: KeywordSpotter) -> None:
    # Every bundled keyword take as one person's enrollment, the other words as their speech.
    takes = Takes("ann", {word: clips(SPEECH / word) for word in WORDS},
                  clips(SPEECH / "_unknown_"))
    adapted = spotter.with_head(adapt(spotter, [takes]))
    for word in WORDS:
        for path, (rate, samples) in zip(sorted((SPEECH / word).glob("*.wav")),
                                         takes.words[word], strict=True):
            label = adapted.labels[int(adapted.classify(samples, rate).argmax())]
            if (word, path.name) == NOISE_LIKE:
                # Like noise and like other words' noisy variants alike: it lifts no word
                # (Prototypes.exclusive), and is never taken for another word.
                assert label in (word, "silence")
            else:
                assert label == word
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


def test_a_window_like_a_take_is_lifted_towards_its_word_and_others_held_back() -> None:
    from tinyml_core.models import Prototypes

    rng = np.random.default_rng(0)
    takes = rng.normal(size=(4, 16)).astype(np.float32)
    center = np.zeros(16, np.float32)
    # Labels 0-2 are keywords, 3 is "unknown": its examples are no prototypes.
    prototypes = Prototypes.of(takes, np.array([0, 0, 1, 3]), [0, 1, 2], center,
                               lift=6.0, floor=0.5, keyword_penalty=2.0)
    assert len(prototypes.vectors) == 3
    offsets = prototypes.offsets(np.vstack([takes[0], -takes[0], takes[3]]), labels=4)
    assert offsets[0, 0] == pytest.approx(6.0 - 2.0)  # a take itself: the whole lift
    assert offsets[1, 0] == pytest.approx(-2.0)  # its opposite: only the penalty
    assert np.allclose(offsets[:, 2], -2.0)  # a keyword nobody enrolled: the penalty
    assert np.allclose(offsets[:, 3], 0.0)  # "unknown" is never penalised nor lifted
    halfway = takes[1] / np.linalg.norm(takes[1])
    other = rng.normal(size=16)
    other -= other @ halfway * halfway
    # Cosine 0.75 with take 1, halfway from the floor to 1: half the lift.
    mixed = 0.75 * halfway + np.sqrt(1 - 0.75 ** 2) * other / np.linalg.norm(other)
    near = prototypes.offsets(mixed[None].astype(np.float32), labels=4)[0, 0]
    assert near >= 3.0 - 2.0 - 1e-5
    with pytest.raises(ValueError, match="floor"):
        Prototypes.of(takes, np.zeros(4, int), [0], center, 1.0, 1.0, 0.0)
    # Rivals (noise, other speech): a window lifts a word only by as much as it is nearer
    # to the word's take than to every rival.
    room = (0.9 * halfway + np.sqrt(1 - 0.9 ** 2) * other / np.linalg.norm(other)) * 3.0
    rivalled = Prototypes.of(takes, np.array([0, 0, 1, 3]), [0, 1, 2], center, 6.0, 0.5, 2.0,
                             not_words=room[None].astype(np.float32))
    assert len(rivalled.vectors) == 3  # the takes are all kept
    assert rivalled.offsets(takes[1][None], labels=4)[0, 0] == pytest.approx(
        6.0 * (1 - 0.9) / 0.5 - 2.0, abs=1e-4)  # the take itself: only its lead over the room
    at_room = rivalled.offsets(room[None].astype(np.float32), labels=4)[0]
    assert np.allclose(at_room[[0, 1, 2]], -2.0)  # the room itself lifts nothing
    assert rivalled.offsets(takes[2][None], labels=4)[0, 1] > 6.0 - 2.0 - 0.6  # far from it
    # Exclusive: a window as like word 0's take as word 1's lifts neither.
    from dataclasses import replace

    exclusive = replace(prototypes, exclusive=True)
    both = (takes[0] / np.linalg.norm(takes[0]) + takes[2] / np.linalg.norm(takes[2]))[None]
    assert np.allclose(exclusive.offsets(both.astype(np.float32), labels=4)[0, :3], -2.0,
                       atol=1e-5)
    assert prototypes.offsets(both.astype(np.float32), labels=4)[0, :2].max() > -2.0 + 0.5
    assert exclusive.offsets(takes[0][None], labels=4)[0, 0] > -2.0 + 1.0  # its own take


def test_an_adapted_layer_without_prototypes_is_the_fitted_layer(
        spotter: KeywordSpotter) -> None:
    from dataclasses import replace

    takes = Takes("ann", {"yes": clips(SPEECH / "yes")})
    head = adapt(spotter, [takes])  # no anchors: the household's prototypes alone
    household, = head.prototypes
    assert len(household.vectors) > 0
    fitted = replace(head, prototypes=())
    features = np.stack([spotter.features(s, r) for r, s in clips(SPEECH / "no")])
    embeddings = spotter.embed_features(features)
    keywords = [spotter.labels.index(word) for word in WORDS]
    # Nothing like a "yes" take: every keyword loses exactly the penalty.
    shift = head.logits(embeddings) - fitted.logits(embeddings)
    lifted = shift[:, keywords] > -household.keyword_penalty + 1e-4
    assert not lifted[:, [i for i, w in enumerate(WORDS) if w != "yes"]].any()
    with_anchors = adapt(spotter, [takes], anchors=Anchors(embeddings, np.array(
        [spotter.labels.index("no")] * len(embeddings))))
    assert [len(p.vectors) for p in with_anchors.prototypes] == [len(household.vectors),
                                                                  len(embeddings)]


# --- the enrolled nodes: `collector enroll`, the file, and the collector answering with it ----

MISSED = ("go", "3ffa3457_nohash_0.wav")  # kws_b hesitates: 0.37 "go", 0.34 "down"


def enroll_folder(tmp_path: Path, words: tuple[str, ...] = WORDS) -> Path:
    import shutil

    folder = tmp_path / "ann"
    for word in (*words, "_unknown_"):
        shutil.copytree(SPEECH / word, folder / word)
    return folder


def config_file(tmp_path: Path) -> Path:
    config = tmp_path / "collector.toml"
    config.write_text(f'[collector]\nenrollment_path = "{tmp_path / "enrolled.json"}"\n'
                      f'models_dir = "{MODELS}"\nstate_path = ""\n')
    return config


def run_enroll(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from collector.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["enroll", *args])
    return code, out.getvalue()


def keyword_answers(inference: object, node_id: str, paths: list[Path], first: int = 0
                    ) -> list[tuple[str, str]]:
    """The collector's (label, model_version) answers to ``paths`` sent as sound events
    numbered from ``first`` (a number sent again is a re-send, answered once)."""
    from tinyml_core.messages import AudioClip, KeywordResult
    from tinyml_core.topics import audio_topic

    answers = []
    for index, path in enumerate(paths, start=first):
        rate, samples = read_wav(path)
        clip = AudioClip.from_samples(node_id, 1_767_225_600.0 + 10 * index, index, rate,
                                      samples)
        for out in inference.handle(audio_topic(node_id), clip.encode()):  # type: ignore[attr-defined]
            result = KeywordResult.decode(out.payload)
            answers.append((result.label, result.model_version))
    return answers


def test_an_enrolled_node_answers_with_its_own_layer_and_says_so(tmp_path: Path) -> None:
    from collector.inference import Inference
    from collector.settings import CollectorOptions

    config = config_file(tmp_path)
    options = CollectorOptions(models_dir=str(MODELS), state_path="",
                               enrollment_path=str(tmp_path / "enrolled.json"))
    rate, samples = read_wav(SPEECH / MISSED[0] / MISSED[1])
    shipped = load_keyword_spotter(MODELS, "kws_b")
    before = shipped.classify(samples, rate)
    go = shipped.labels.index("go")
    assert before[go] < shipped.contract.default_threshold  # the shipped model misses it

    code, out = run_enroll("kitchen", str(enroll_folder(tmp_path)), "--config", str(config))
    assert code == 0, out
    assert "enrolled ann on kitchen: 16 takes of 8 words, 4 clips of other speech" in out

    after = Inference.from_options(options)
    own = after._enrolled["kitchen"]
    probabilities = own.classify(samples, rate)
    assert own.labels[int(probabilities.argmax())] == "go"  # the person's word now leads
    assert probabilities[own.labels.index("go")] > before[own.labels.index("go")] + 0.3
    (_, version), = keyword_answers(after, "kitchen", [SPEECH / MISSED[0] / MISSED[1]])
    assert "+enrolled-" in version
    # Another node keeps the shipped model, and its version says so.
    (_, version), = keyword_answers(after, "hallway", [SPEECH / MISSED[0] / MISSED[1]])
    assert "+enrolled-" not in version


def test_the_enrollment_file_gives_back_the_same_answers(tmp_path: Path) -> None:
    import json

    from collector.enrollment.store import Enrollments, adaptation_models

    spotter, anchors = adaptation_models(MODELS, "kws_b")
    store = Enrollments(tmp_path / "enrolled.json")
    takes = Takes("ann", {word: clips(SPEECH / word) for word in ("go", "no")},
                  clips(SPEECH / "_unknown_"))
    node = store.add("kitchen", takes, spotter, anchors=anchors)
    store.save()
    again = Enrollments.load(tmp_path / "enrolled.json").nodes["kitchen"]
    made, kept = node.head(spotter, anchors), again.head(spotter, anchors)
    assert len(kept.prototypes) == len(made.prototypes) == 2  # household, anchors
    for loaded, fitted in zip(kept.prototypes, made.prototypes, strict=True):
        assert np.array_equal(loaded.labels, fitted.labels)
        assert np.allclose(loaded.vectors, fitted.vectors, atol=1e-6)
        assert loaded.rivals is not None and fitted.rivals is not None
        assert np.allclose(loaded.rivals, fitted.rivals, atol=1e-6)
    rate, samples = read_wav(SPEECH / MISSED[0] / MISSED[1])
    assert np.allclose(spotter.with_head(kept).scan(samples, rate).probabilities,
                       spotter.with_head(made).scan(samples, rate).probabilities,
                       atol=1e-4)
    # Only the fitted layer, the examples and the settings are kept: the prototypes and
    # the anchors' copies are made again from them.
    document = json.loads((tmp_path / "enrolled.json").read_text())
    kitchen = document["nodes"]["kitchen"]
    assert set(kitchen["head"]) == {"weights", "bias", "logit_range"}
    assert kitchen["prototypes"]["anchor_floor"] == 0.7
    assert kitchen["prototypes"]["exclusive"] is True
    assert all(p.exclusive for p in kept.prototypes)
    kitchen["prototypes"]["prototype_floor"] = 1.5
    (tmp_path / "damaged.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="prototype settings"):
        Enrollments.load(tmp_path / "damaged.json")
    del kitchen["prototypes"]["anchor_lift"]
    (tmp_path / "damaged.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="missing or malformed 'anchor_lift'"):
        Enrollments.load(tmp_path / "damaged.json")


def test_two_enrollments_at_once_keep_both_people(tmp_path: Path) -> None:
    """`collector enroll` and a running collector enrolling over the broker change one file:
    the second waits for the first instead of writing over the person it added."""
    import threading

    from collector.enrollment.store import Enrollments, adaptation_models

    spotter, anchors = adaptation_models(MODELS, "kws_b")
    path = tmp_path / "enrolled.json"
    first_reads, second_read = threading.Event(), threading.Event()

    def enroll_bob() -> None:
        first_reads.wait()
        with Enrollments.changing(path) as store:
            second_read.set()
            store.add("kitchen", Takes("bob", {"no": clips(SPEECH / "no")}), spotter,
                      anchors=anchors)

    second = threading.Thread(target=enroll_bob)
    second.start()
    with Enrollments.changing(path) as store:
        first_reads.set()
        # Without the lock the second has read the (empty) file by now, and one of the two
        # writes would lose the other's person.
        assert not second_read.wait(1.0)
        store.add("kitchen", Takes("ann", {"go": clips(SPEECH / "go")}), spotter,
                  anchors=anchors)
    second.join(60)
    assert sorted(Enrollments.load(path).nodes["kitchen"].people) == ["ann", "bob"]
    # No temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enrolled.json", "enrolled.json.lock"]

    # A damaged file is refused with its name, and left as it was.
    path.write_bytes(b"{not json")
    with pytest.raises(ValueError, match=f"{path.name}: not JSON"), \
            Enrollments.changing(path) as store:
        store.add("kitchen", Takes("cy", {"go": clips(SPEECH / "go")}), spotter)
    assert path.read_bytes() == b"{not json"


def test_a_running_collector_picks_up_a_new_person_without_a_restart(tmp_path: Path) -> None:
    from collector.inference import Inference
    from collector.settings import CollectorOptions

    options = CollectorOptions(models_dir=str(MODELS), state_path="",
                               enrollment_path=str(tmp_path / "enrolled.json"))
    inference = Inference.from_options(options)
    missed = SPEECH / MISSED[0] / MISSED[1]
    assert "+enrolled-" not in keyword_answers(inference, "kitchen", [missed])[0][1]
    code, out = run_enroll("kitchen", str(enroll_folder(tmp_path)), "--config",
                           str(config_file(tmp_path)))
    assert code == 0, out
    inference.refresh_enrollments()  # what the worker's loop does every few seconds
    assert "+enrolled-" in keyword_answers(inference, "kitchen", [missed], first=1)[0][1]


def test_list_remove_and_bad_input_change_nothing_they_should_not(tmp_path: Path) -> None:
    config = ["--config", str(config_file(tmp_path))]
    store = tmp_path / "enrolled.json"
    code, out = run_enroll("kitchen", "--list", *config)
    assert code == 0 and "nobody enrolled" in out
    assert run_enroll("kitchen", str(enroll_folder(tmp_path, ("yes", "no"))), *config)[0] == 0
    saved = store.read_bytes()

    bad = tmp_path / "bob"
    (bad / "marvin").mkdir(parents=True)
    code, out = run_enroll("kitchen", str(bad), *config)
    assert code != 0 and "marvin: not a keyword of the model" in out
    silent = tmp_path / "quiet"
    (silent / "yes").mkdir(parents=True)
    from tinyml_core.recordings import write_wav

    write_wav(silent / "yes" / "take.wav", 16000, np.zeros(16000, np.int16))
    code, out = run_enroll("kitchen", str(silent), *config)
    assert code != 0 and "silence" in out
    write_wav(silent / "yes" / "take.wav", 16000, np.full(16000 * 20, 3000, np.int16))
    code, out = run_enroll("kitchen", str(silent), *config)
    assert code != 0 and "20.00 s long" in out
    code, out = run_enroll("kitchen", "--remove", "bob", *config)
    assert code != 0 and "'bob' is not enrolled on kitchen (ann is)" in out
    code, out = run_enroll("not a node id", str(enroll_folder(tmp_path / "x")), *config)
    assert code != 0
    assert store.read_bytes() == saved  # none of these changed the file

    code, out = run_enroll("kitchen", "--list", *config)
    assert "ann: 4 takes (no 2, yes 2), 4 clips of other speech" in out
    code, out = run_enroll("kitchen", "--remove", "ann", *config)
    assert code == 0 and "answers with the shipped model again" in out


def test_a_corrupt_or_foreign_enrollment_file_is_refused_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from collector.inference import Inference
    from collector.settings import CollectorOptions

    store = tmp_path / "enrolled.json"
    config = ["--config", str(config_file(tmp_path))]
    options = CollectorOptions(models_dir=str(MODELS), state_path="",
                               enrollment_path=str(store))
    for content, reason in ((b"{not json", "not JSON"),
                            (b'{"format": "tinyml-windows", "version": 1}',
                             "not a collector enrollment file"),
                            (b'{"format": "tinyml-enrolled", "version": 1, "nodes": '
                             b'{"kitchen": {"head": 3}}}', "node 'kitchen'")):
        store.write_bytes(content)
        code, out = run_enroll("kitchen", "--list", *config)
        assert code != 0 and reason in out
        inference = Inference.from_options(options)  # the collector runs, with no enrollment
        assert reason in caplog.text
        missed = SPEECH / MISSED[0] / MISSED[1]
        assert "+enrolled-" not in keyword_answers(inference, "kitchen", [missed])[0][1]
        assert store.read_bytes() == content


def test_anchors_are_checked_against_the_manifest(tmp_path: Path) -> None:
    import json
    import shutil

    from tinyml_core.models import load_anchors

    for name in ("manifest.json", "kws_b.tflite.zlib", "kws_b.anchors.npz"):
        shutil.copy(MODELS / name, tmp_path / name)
    embeddings, targets = load_anchors(tmp_path, "kws_b") or (None, None)
    assert embeddings is not None and targets is not None
    assert embeddings.shape == (len(targets), 128) and set(targets) <= set(range(10))
    data = bytearray((tmp_path / "kws_b.anchors.npz").read_bytes())
    data[-1] ^= 1
    (tmp_path / "kws_b.anchors.npz").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="refusing a changed anchors"):
        load_anchors(tmp_path, "kws_b")
    shutil.copy(MODELS / "kws_b.anchors.npz", tmp_path / "kws_b.anchors.npz")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["models"]["kws_b"]["anchors"]["model_sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="another build of the model"):
        load_anchors(tmp_path, "kws_b")
    assert load_anchors(MODELS, "kws_a") is None  # no anchors: enrollment says how to make them


def test_enrollment_works_on_the_pretrained_embedding_model(tmp_path: Path) -> None:
    """`collector enroll` adapts kws_e's head as it adapts kws_b's last layer (numpy only)."""
    from collector.inference import Inference
    from collector.settings import CollectorOptions

    config = config_file(tmp_path)
    config.write_text(config.read_text() + 'keyword_model = "kws_e"\n')
    code, out = run_enroll("kitchen", str(enroll_folder(tmp_path)), "--config", str(config))
    assert code == 0, out
    assert "enrolled ann on kitchen: 16 takes of 8 words" in out
    options = CollectorOptions(models_dir=str(MODELS), state_path="", keyword_model="kws_e",
                               enrollment_path=str(tmp_path / "enrolled.json"))
    after = Inference.from_options(options)
    assert after.spotter is not None and after.spotter.name == "kws_e"
    takes = sorted((tmp_path / "ann" / "yes").glob("*.wav"))
    (label, version), = keyword_answers(after, "kitchen", takes[:1])
    assert label == "yes" and "+enrolled-" in version


def test_a_model_is_adapted_with_the_settings_its_manifest_names(tmp_path: Path) -> None:
    """A pretrained embedding's likenesses are not kws_b's: `benchmarks/kws_household.py
    --record` stores each model's own settings, and enrolling uses them."""
    from collector.enrollment.adapt import ADAPT, adapt_settings
    from collector.enrollment.store import Enrollments, adaptation_models

    spotter, anchors = adaptation_models(MODELS, "kws_b")
    assert adapt_settings({}) == ADAPT
    own = KeywordSpotter(spotter.name, {**spotter.entry, "enrollment": {
        "settings": {"prototype_floor": 0.5, "anchor_floor": 0.55, "keyword_penalty": 2}}},
        spotter.model, None, spotter.front_end)
    store = Enrollments(tmp_path / "enrolled.json")
    node = store.add("kitchen", Takes("ann", {"go": clips(SPEECH / "go")}), own,
                     anchors=anchors)
    assert (node.settings.prototype_floor, node.settings.anchor_floor,
            node.settings.keyword_penalty) == (0.5, 0.55, 2.0)
    assert node.settings.prototype_lift == ADAPT.prototype_lift  # what it does not name
    household, _ = node.head(own, anchors).prototypes
    assert household.floor == 0.5
    store.save()
    assert Enrollments.load(tmp_path / "enrolled.json").nodes["kitchen"].settings \
        == node.settings
    with pytest.raises(ValueError, match="unknown enrollment settings prototype_flor"):
        adapt_settings({"enrollment": {"settings": {"prototype_flor": 0.5}}})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        adapt_settings({"enrollment": {"settings": {"prototype_floor": 1.2}}})


# --- a word of the household's own (`--word`) -----------------------------------------------

KIM = REPO_ROOT / "samples" / "enroll" / "kim"  # two takes of "happy" (not a keyword)
KIM_TEST = REPO_ROOT / "samples" / "enroll" / "kim-happy.wav"  # their third


def kws_e_config(tmp_path: Path) -> Path:
    config = config_file(tmp_path)
    config.write_text(config.read_text() + 'keyword_model = "kws_e"\n')
    return config


def kws_e_inference(tmp_path: Path) -> object:
    from collector.inference import Inference
    from collector.settings import CollectorOptions

    return Inference.from_options(CollectorOptions(
        models_dir=str(MODELS), state_path="", keyword_model="kws_e",
        enrollment_path=str(tmp_path / "enrolled.json")))


def test_a_node_learns_a_word_of_its_own_and_only_that_node_answers_it(
        tmp_path: Path) -> None:
    config = kws_e_config(tmp_path)
    code, out = run_enroll("kitchen", str(KIM), "--word", "happy", "--config", str(config))
    assert code == 0, out
    assert "enrolled kim on kitchen: 2 takes of 1 word" in out
    assert "its own words: happy" in out
    inference = kws_e_inference(tmp_path)
    (label, version), = keyword_answers(inference, "kitchen", [KIM_TEST])
    assert label == "happy" and "+enrolled-" in version
    (label, _), = keyword_answers(inference, "hallway", [KIM_TEST])
    assert label == "unknown"  # no other node knows it
    # Its keywords and other sounds answer as before: other words and noise stay unknown.
    answers = keyword_answers(inference, "kitchen", [
        *sorted((SPEECH / "_unknown_").glob("[bcm]*.wav")),
        *sorted((SPEECH / "_background_noise_").glob("*.wav")),
        sorted((SPEECH / "yes").glob("*.wav"))[0]], first=1)
    assert [label for label, _ in answers] == ["unknown"] * 5 + ["yes"]
    assert inference.discovery_names("kitchen")[1][-1] == "happy"  # type: ignore[attr-defined]
    assert "happy" not in inference.discovery_names("hallway")[1]  # type: ignore[attr-defined]


def test_a_word_of_its_own_must_be_named_and_a_proper_word(tmp_path: Path) -> None:
    import shutil

    config = kws_e_config(tmp_path)
    code, out = run_enroll("kitchen", str(KIM), "--config", str(config))
    assert code != 0 and "happy: not a keyword of the model" in out and "--word happy" in out
    for bad, reason in (("Happy", "lower-case"), ("stop", "already a label"),
                        ("so-", "lower-case"), ("lights", "no takes of the new word")):
        code, out = run_enroll("kitchen", str(KIM), "--word", "happy", "--word", bad,
                               "--config", str(config))
        assert code != 0 and reason in out, (bad, out)
    folder = tmp_path / "odd"
    shutil.copytree(KIM / "happy", folder / "Lights!")
    code, out = run_enroll("kitchen", str(folder), "--word", "Lights!", "--config", str(config))
    assert code != 0 and "lower-case" in out
    assert not (tmp_path / "enrolled.json").exists()  # nothing changed


def test_own_words_are_listed_kept_and_forgotten(tmp_path: Path) -> None:
    import shutil

    from collector.enrollment.store import Enrollments
    from collector.homeassistant import trigger_removal_messages

    config = kws_e_config(tmp_path)
    assert run_enroll("kitchen", str(KIM), "--word", "happy", "--config", str(config))[0] == 0
    assert run_enroll("kitchen", str(enroll_folder(tmp_path)), "--config", str(config))[0] == 0
    code, out = run_enroll("kitchen", "--list", "--config", str(config))
    assert code == 0 and "its own words: happy" in out and "kim: 2 takes (happy 2)" in out
    # What the file gives back answers as the node did when it was enrolled.
    store = Enrollments.load(tmp_path / "enrolled.json")
    node = store.nodes["kitchen"]
    assert node.words == ("happy",) and set(node.people["kim"].own) == {"happy"}
    inference = kws_e_inference(tmp_path)
    spotter = inference._enrolled["kitchen"]  # type: ignore[attr-defined]
    rate, samples = read_wav(KIM_TEST)
    again = kws_e_inference(tmp_path)._enrolled["kitchen"]  # type: ignore[attr-defined]
    assert np.allclose(spotter.classify(samples, rate), again.classify(samples, rate))
    assert spotter.labels[-1] == "happy" and spotter.keywords[-1] == "happy"
    assert inference.take_changed_words() == {"kitchen": ()}  # type: ignore[attr-defined]
    # Forgetting the word forgets kim (who enrolled nothing else); ann stays.
    code, out = run_enroll("kitchen", "--remove-word", "happy", "--config", str(config))
    assert code == 0 and "removed the word 'happy' from kitchen; 1 people left" in out, out
    # A running collector sees it: Home Assistant's trigger for the word goes (empty config).
    inference.refresh_enrollments()  # type: ignore[attr-defined]
    assert inference.take_changed_words() == {"kitchen": ("happy",)}  # type: ignore[attr-defined]
    assert "happy" not in inference.discovery_names("kitchen")[1]  # type: ignore[attr-defined]
    (topic, payload), = trigger_removal_messages("kitchen", ["happy"])
    assert topic.endswith("/keyword_happy/config") and payload == b""
    node = Enrollments.load(tmp_path / "enrolled.json").nodes["kitchen"]
    assert node.words == () and set(node.people) == {"ann"}
    (label, _), = keyword_answers(kws_e_inference(tmp_path), "kitchen", [KIM_TEST])
    assert label == "unknown"
    code, out = run_enroll("kitchen", "--remove-word", "happy", "--config", str(config))
    assert code != 0 and "not a word of kitchen's own" in out
    # Kim enrolled again with other speech only: the word nobody has takes of goes with it.
    assert run_enroll("kitchen", str(KIM), "--word", "happy", "--config", str(config))[0] == 0
    speech_only = tmp_path / "kim-speech"
    shutil.copytree(SPEECH / "yes", speech_only / "yes")
    code, out = run_enroll("kitchen", str(speech_only), "--person", "kim", "--config",
                           str(config))
    assert code == 0, out
    assert Enrollments.load(tmp_path / "enrolled.json").nodes["kitchen"].words == ()


def test_own_words_are_matched_on_the_model_input_at_any_offset() -> None:
    from tinyml_core.models import OwnWords

    rng = np.random.default_rng(0)
    take = rng.normal(size=(10, 96)).astype(np.float32)
    other = rng.normal(size=(10, 96)).astype(np.float32)
    own = OwnWords(("happy",), take[None], np.array([0]), floor=0.55, threshold=0.72)
    later = np.concatenate([rng.normal(size=(2, 96)), take[:-2]]).astype(np.float32)
    likeness = own.likeness(np.stack([take, later, other]))[:, 0]
    assert likeness[0] == pytest.approx(1.0, abs=1e-5)
    assert likeness[1] > 0.85  # the word two frames later in the window
    assert abs(likeness[2]) < 0.2
    # At the floor the word's probability is the threshold, whatever the model's logits.
    at_floor = np.stack([take, other])
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    shifted = OwnWords(("happy",), take[None], np.array([0]), floor=0.9999, threshold=0.72)
    column = shifted.logits(logits, at_floor)
    together = np.concatenate([logits, column], axis=1)
    probability = np.exp(together[0]) / np.exp(together[0]).sum()
    assert probability[-1] == pytest.approx(0.72, abs=0.01)
    with pytest.raises(ValueError, match="templates"):
        OwnWords(("a", "b"), take[None], np.array([2]), floor=0.5, threshold=0.7)


def test_a_clipped_take_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    from tinyml_core.recordings import write_wav

    config = kws_e_config(tmp_path)
    folder = tmp_path / "loud"
    (folder / "happy").mkdir(parents=True)
    rate, samples = read_wav(KIM / "happy" / "take-1.wav")
    loud = np.clip(samples.astype(np.int32) * 40, -32768, 32767).astype(np.int16)
    write_wav(folder / "happy" / "take-1.wav", rate, loud)
    code, out = run_enroll("kitchen", str(folder), "--word", "happy", "--config", str(config))
    assert code != 0 and "take-1.wav: clipped" in out, out
    assert not (tmp_path / "enrolled.json").exists()

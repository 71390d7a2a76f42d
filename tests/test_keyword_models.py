"""Which keyword model answers, and with which threshold: a clip sent on its own is decided
with the model's clip threshold, a microphone's sound event with its stream threshold, and a
node may be answered by another model than the collector's default (issue 40)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from collector.inference import Inference
from collector.settings import parse_node_keyword_models
from tests.conftest import REPO_ROOT
from tinyml_core.errors import ConfigError, PayloadError
from tinyml_core.messages import CLIP, SOUND_EVENT, AudioClip, KeywordResult
from tinyml_core.models import load_keyword_spotter
from tinyml_core.recordings import read_wav
from tinyml_core.topics import audio_topic

MODELS = REPO_ROOT / "models"
T0 = 1_729_300_000.0


def yes_clip(node: str, capture: str = SOUND_EVENT, seq: int = 0) -> bytes:
    rate, samples = read_wav(next((REPO_ROOT / "samples" / "speech" / "yes").glob("*.wav")))
    return AudioClip.from_samples(node, T0 + 10 * seq, seq, rate, samples,
                                  capture=capture).encode()


def test_an_audio_message_says_whether_it_is_one_clip_or_a_sound_event() -> None:
    rate, samples = read_wav(next((REPO_ROOT / "samples" / "speech" / "yes").glob("*.wav")))
    clip = AudioClip.from_samples("pi-1", T0, 0, rate, samples, capture=CLIP)
    assert b'"capture"' in clip.encode() and AudioClip.decode(clip.encode()).capture == CLIP
    event = AudioClip.from_samples("pi-1", T0, 0, rate, samples)
    assert b'"capture"' not in event.encode()  # the default, as older nodes send it
    assert AudioClip.decode(event.encode()).capture == SOUND_EVENT
    with pytest.raises(PayloadError, match="capture"):
        AudioClip.from_samples("pi-1", T0, 0, rate, samples, capture="button")
    hostile = clip.encode().replace(b'"vs":"clip"', b'"vs":"both"')
    with pytest.raises(PayloadError, match="capture"):
        AudioClip.decode(hostile)


def test_a_clip_is_decided_with_the_clip_threshold_and_an_event_with_the_streams(
        tmp_path: Path) -> None:
    for path in MODELS.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["models"]["kws_c"]
    entry["default_threshold"] = {"value": 0.5}
    entry["default_clip_threshold"] = {"value": 0.999}  # no clip can be that sure
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    spotter = load_keyword_spotter(tmp_path, "kws_c")
    assert (spotter.contract.default_threshold, spotter.contract.clip_threshold) == (0.5, 0.999)
    inference = Inference(tmp_path, (), "kws_c")
    [event] = inference.handle(audio_topic("pi-1"), yes_clip("pi-1", SOUND_EVENT, 0))
    [clip] = inference.handle(audio_topic("pi-1"), yes_clip("pi-1", CLIP, 1))
    assert KeywordResult.decode(event.payload).label == "yes"
    assert KeywordResult.decode(clip.payload).label == "unknown"
    # A manifest without a clip threshold: the stream's serves clips too.
    del entry["default_clip_threshold"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert load_keyword_spotter(tmp_path, "kws_c").contract.clip_threshold == 0.5


def test_a_node_may_be_answered_by_another_keyword_model() -> None:
    inference = Inference(MODELS, (), "kws_b", node_keyword_models={"kitchen": "kws_c"})
    assert inference.node_keyword_models == {"kitchen": "kws_c"}
    [kitchen] = inference.handle(audio_topic("kitchen"), yes_clip("kitchen"))
    [hall] = inference.handle(audio_topic("hall"), yes_clip("hall"))
    assert KeywordResult.decode(kitchen.payload).model == "kws_c"
    assert KeywordResult.decode(hall.payload).model == "kws_b"


def test_a_node_keyword_model_setting_is_checked() -> None:
    assert parse_node_keyword_models(("pi-1=kws_e",)) == {"pi-1": "kws_e"}
    with pytest.raises(ConfigError, match="not one of"):
        parse_node_keyword_models(("pi-1=kws_z",))
    with pytest.raises(ConfigError, match="NODE=MODEL"):
        parse_node_keyword_models(("pi-1",))
    refused = Inference(MODELS / "missing", (), None, node_keyword_models={"pi-1": "kws_c"})
    assert "kws_c" in refused.refused and refused.node_keyword_models == {}

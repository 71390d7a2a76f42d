"""The pretrained speech embedding as a keyword model's front end (tinyml_core/embedding.py):
its files checked by sha256, one computation per clip shared by every window, and the same
numbers for training's batches and the collector's scan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tinyml_core.embedding import (
    EMBEDDING_SIZE,
    EmbeddingParams,
    check_files,
    load_speech_embedding,
)
from tinyml_core.errors import ModelLoadError
from tinyml_core.models import front_end_params, read_manifest
from tinyml_core.recordings import read_wav

MODELS = REPO_ROOT / "models"
SPEECH = REPO_ROOT / "samples" / "speech"


def shipped_params(window_embeddings: int = 10) -> EmbeddingParams:
    from training.pretrained import params

    return params(window_embeddings)


def test_the_shipped_files_are_the_pinned_ones_with_their_licence() -> None:
    params = shipped_params()
    mel, embedding = check_files(MODELS, params)
    assert (len(mel), len(embedding)) == (1_092_516, 1_330_312)
    assert "Apache License" in (MODELS / "LICENSE-speech-embedding.txt").read_text()
    assert front_end_params(params.to_dict()) == params  # the manifest's form, read back


def test_a_window_spans_its_embeddings_and_one_clip_gives_exactly_one() -> None:
    params = shipped_params(10)
    # 10 embeddings 8 mel frames apart, each over 76 frames of 512 samples every 160.
    assert params.clip_samples == 160 * (8 * 9 + 76 - 1) + 512
    assert params.feature_shape == (10, EMBEDDING_SIZE)
    front_end = load_speech_embedding(MODELS, params)
    rate, samples = read_wav(next((SPEECH / "yes").glob("*.wav")))
    frames = front_end(samples, rate)
    assert frames.shape == (10, EMBEDDING_SIZE) and np.isfinite(frames).all()


def test_a_long_event_is_embedded_once_and_each_window_is_its_own_slice() -> None:
    # The scan computes an event's embeddings once and slides the head over them: a window
    # cut from them must be what a clip of that window alone gives (to float rounding).
    params = shipped_params(10)
    front_end = load_speech_embedding(MODELS, params)
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal(16000 * 3) * 0.05).astype(np.float32)
    everything = front_end.frames(audio)
    assert len(everything) == (((len(audio) - 512) // 160 + 1) - 76) // 8 + 1
    for window in (0, 7, len(everything) - 10):
        start = window * params.frame_step
        alone = front_end.frames(audio[start:start + params.clip_samples])
        assert alone.shape == (10, EMBEDDING_SIZE)
        np.testing.assert_allclose(alone, everything[window:window + 10], atol=2e-3)
    batch = front_end.batch(np.stack([audio[:params.clip_samples],
                                      audio[params.frame_step:params.frame_step
                                            + params.clip_samples]]))
    np.testing.assert_allclose(batch[0], everything[:10], atol=2e-3)
    np.testing.assert_allclose(batch[1], everything[1:11], atol=2e-3)


def test_an_altered_or_missing_front_end_file_is_refused_by_its_sha256(tmp_path: Path) -> None:
    params = shipped_params()
    for named in (params.mel, params.embedding):
        shutil.copy(MODELS / named.file, tmp_path / named.file)
    altered = tmp_path / params.embedding.file
    data = bytearray(altered.read_bytes())
    data[5000] ^= 0xFF
    altered.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"sha256 .* refusing a changed speech embedding"):
        load_speech_embedding(tmp_path, params)
    altered.unlink()
    with pytest.raises(ModelLoadError, match=r"embedding model file .* is missing"):
        load_speech_embedding(tmp_path, params)


def test_a_collector_whose_embedding_file_is_altered_serves_its_other_models(
        tmp_path: Path) -> None:
    from collector.inference import Inference

    manifest = read_manifest(MODELS)
    if "kws_e" not in manifest:
        pytest.skip("kws_e is not built")
    for path in MODELS.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    altered = tmp_path / shipped_params().mel.file
    altered.write_bytes(altered.read_bytes()[:-10])
    inference = Inference(tmp_path, ("forecast_a",), "kws_e")
    assert inference.spotter is None and "kws_e" in inference.refused
    assert "sha256" in inference.refused["kws_e"]
    assert [f.name for f in inference.forecasters] == ["forecast_a"]
    json.dumps(inference.refused)  # a reason a person can read, not an object

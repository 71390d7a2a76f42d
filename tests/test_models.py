"""The model loader: manifest checks, sha256, contracts, the runtime (no TensorFlow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tinyml_core.errors import ModelLoadError
from tinyml_core.models import (
    MANIFEST_NAME,
    RUNTIME_NOTICE,
    load_forecaster,
    load_keyword_spotter,
    read_manifest,
    write_manifest_entry,
)

MODELS = REPO_ROOT / "models"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A copy of the shipped models/ to break in various ways."""
    target = tmp_path / "models"
    shutil.copytree(MODELS, target, ignore=shutil.ignore_patterns("figures", "*.md"))
    return target


NOON = 1_729_339_200.0  # 2024-10-19 12:00 UTC


def edit_manifest(models: Path, change: object) -> None:
    path = models / MANIFEST_NAME
    document = json.loads(path.read_text())
    change(document)  # type: ignore[operator]
    path.write_text(json.dumps(document))


def test_every_shipped_model_loads_and_answers_in_its_contract() -> None:
    for name, entry in read_manifest(MODELS).items():
        if entry["task"] == "forecast":
            forecaster = load_forecaster(MODELS, name)
            window = np.tile([[12.0, 75.0]], (forecaster.contract.window, 1))[None]
            forecast = forecaster.predict(window, np.array([NOON]))
            assert forecast.shape == (1, entry["output"]["steps"], 2)
            # A flat window: the forecast stays near it (physical units in and out).
            assert np.abs(forecast[0] - [12.0, 75.0]).max() < 3.0
        else:
            spotter = load_keyword_spotter(MODELS, name)
            probabilities = spotter.classify(np.zeros(16000, np.int16), 16000)
            assert probabilities.shape == (len(spotter.labels),)
            assert abs(float(probabilities.sum()) - 1.0) < 0.02


def test_forecast_humidity_stays_within_0_and_100_percent() -> None:
    # A window rising into saturation: a residual model extrapolates past 100 %.
    for name in ("forecast_a", "forecast_b"):
        forecaster = load_forecaster(MODELS, name)
        rising = np.array([[10.0, 85.0 + 3 * step] for step in range(6)], dtype=np.float32)[None]
        falling = np.array([[10.0, 5.0 - step] for step in range(6)], dtype=np.float32)[None]
        for window in (rising, falling):
            humidity = forecaster.predict(window, np.array([NOON]))[0, :, 1]
            assert (humidity >= 0).all() and (humidity <= 100).all(), (name, humidity)
        # At midnight humidity keeps rising: the model says more than 100 %, the loader 100.
        assert forecaster.predict(rising, np.array([NOON + 43_200]))[0, :, 1].max() == 100.0


def test_a_changed_model_file_is_refused(models: Path) -> None:
    path = models / "forecast_a.tflite.zlib"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"sha256.*refusing"):
        load_forecaster(models, "forecast_a")
    load_forecaster(models, "forecast_b")  # the others still load


def test_missing_file_unknown_name_and_bad_file_names_are_refused(models: Path) -> None:
    (models / "forecast_b.tflite.zlib").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_forecaster(models, "forecast_b")
    with pytest.raises(ModelLoadError, match=r"not in .*it has"):
        load_forecaster(models, "forecast_z")
    edit_manifest(models, lambda d: d["models"]["forecast_a"].update(file="../etc/passwd"))
    with pytest.raises(ModelLoadError, match="no valid model file"):
        load_forecaster(models, "forecast_a")


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": 2, "models": {}}',
                                  '{"format": 1, "models": []}',
                                  '{"format": 1, "models": {"a": 3}}', "\xff\xfe"])
def test_a_malformed_manifest_is_refused(models: Path, text: str) -> None:
    (models / MANIFEST_NAME).write_text(text, encoding="latin-1")
    with pytest.raises(ModelLoadError, match="manifest"):
        read_manifest(models)


def test_no_manifest_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"training\.build"):
        read_manifest(tmp_path)


def test_contract_that_does_not_fit_the_model_is_refused(models: Path) -> None:
    edit_manifest(models, lambda d: d["models"]["forecast_a"]["output"].update(steps=4))
    with pytest.raises(ModelLoadError, match="output shape"):
        load_forecaster(models, "forecast_a")
    edit_manifest(models, lambda d: d["models"]["forecast_b"].update(task="keyword"))
    with pytest.raises(ModelLoadError, match="not a forecaster"):
        load_forecaster(models, "forecast_b")
    with pytest.raises(ModelLoadError, match="not a keyword spotter"):
        load_keyword_spotter(models, "forecast_a")


def test_corrupt_model_bytes_with_matching_hash_are_refused(models: Path) -> None:
    import hashlib
    import zlib

    garbage = zlib.compress(b"not a flatbuffer" * 10)
    (models / "forecast_a.tflite.zlib").write_bytes(garbage)
    edit_manifest(models, lambda d: d["models"]["forecast_a"].update(
        sha256=hashlib.sha256(garbage).hexdigest()))
    with pytest.raises(ModelLoadError, match="runtime refused"):
        load_forecaster(models, "forecast_a")


def test_wrong_input_shape_is_a_clear_error() -> None:
    forecaster = load_forecaster(MODELS, "forecast_a")
    with pytest.raises(ModelLoadError, match="input of shape"):
        forecaster.predict(np.zeros((1, 5, 2), np.float32), np.array([NOON]))


def test_a_forecaster_that_uses_the_time_of_day_needs_the_times() -> None:
    forecaster = load_forecaster(MODELS, "forecast_a")
    assert forecaster.contract.time_features == ("time_of_day",)
    window = np.tile([[12.0, 75.0]], (6, 1))[None].astype(np.float32)
    with pytest.raises(ValueError, match="needs the time of each window's last reading"):
        forecaster.predict(window)
    # Noon and midnight differ: the daily cycle is part of the forecast.
    noon, midnight = (forecaster.predict(window, np.array([t])) for t in (NOON, NOON + 43_200))
    assert not np.allclose(noon, midnight)


def test_write_manifest_entry_keeps_the_others(tmp_path: Path) -> None:
    write_manifest_entry(tmp_path, "b", {"task": "forecast"})
    write_manifest_entry(tmp_path, "a", {"task": "keyword"})
    write_manifest_entry(tmp_path, "b", {"task": "forecast", "x": 1})
    assert read_manifest(tmp_path) == {"a": {"task": "keyword"}, "b": {"task": "forecast", "x": 1}}
    assert not list(tmp_path.glob(".manifest-*"))


def test_the_runtimes_delegate_notice_is_held_back_and_everything_else_on_stderr_arrives(
) -> None:
    # In a process of its own: the notice comes once per process, from the runtime's C++
    # code straight to file descriptor 2, where pytest's capture cannot see it.
    script = (
        "import os, sys\n"
        "from tinyml_core.models import _runtime_notice_hidden, load_keyword_spotter\n"
        "load_keyword_spotter('models', 'kws_b')  # the first interpreter of the process\n"
        "with _runtime_notice_hidden():\n"
        "    os.write(2, b'a runtime error\\n')\n"
        "    print('a log line', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          timeout=60, check=True)
    assert done.stderr.decode().splitlines() == ["a runtime error", "a log line", "after"]
    shown = subprocess.run([sys.executable, "-c", script.replace(
        "load_keyword_spotter('models', 'kws_b')", "from tinyml_core.models import "
        "interpreter_class, load_model_bytes, read_manifest\n"
        "interpreter_class()(model_content=load_model_bytes('models', 'kws_b', "
        "read_manifest('models')['kws_b'])).allocate_tensors()")],
        cwd=REPO_ROOT, capture_output=True, timeout=60, check=True)
    assert RUNTIME_NOTICE.decode() in shown.stderr.decode()  # what the test would miss

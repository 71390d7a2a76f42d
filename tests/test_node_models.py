"""A node's own forecaster: the recording it is tuned on, and the collector using it for that
node only (the fine-tuning itself needs TensorFlow: test_training_build.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from collector.inference import Inference
from collector.settings import CollectorOptions, parse_node_models
from tests.conftest import REPO_ROOT
from tinyml_core.errors import ConfigError
from tinyml_core.messages import ClimateReading, Forecast
from tinyml_core.models import MANIFEST_NAME
from tinyml_core.recordings import RecordedMessage, recording_line
from tinyml_core.topics import climate_topic
from training.climate import DataError
from training.recording import MIN_STEPS, load_recording

MODELS = REPO_ROOT / "models"
T0 = 1_729_299_600.0


def tuned_copy(tmp_path: Path, name: str, base: str = "forecast_a") -> Path:
    """The shipped models plus ``name``: the base model's file under a node's name, as
    ``training.build --from-recording`` would write it."""
    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("figures", "*.md"))
    document = json.loads((models / MANIFEST_NAME).read_text())
    entry = dict(document["models"][base], file=f"{name}.tflite.zlib", base_model=base)
    shutil.copy(models / f"{base}.tflite.zlib", models / entry["file"])
    document["models"][name] = entry
    (models / MANIFEST_NAME).write_text(json.dumps(document))
    return models


def forecast_models_of(inference: Inference, node: str) -> set[str]:
    out = []
    for step in range(7):
        reading = ClimateReading(node, T0 + 600 * step, step, 20.0, 50.0)
        out += inference.handle(climate_topic(node), reading.encode())
    return {Forecast.decode(o.payload).model for o in out}


def test_a_node_gets_its_own_forecaster_and_the_others_the_shipped_one(tmp_path: Path) -> None:
    models = tuned_copy(tmp_path, "forecast_a.pi-kitchen")
    options = CollectorOptions(models_dir=str(models), keyword_model="kws_c",
                               node_models=("pi-kitchen=forecast_a.pi-kitchen",))
    inference = Inference.from_options(options)
    assert not inference.refused
    assert forecast_models_of(inference, "pi-kitchen") == {"forecast_a.pi-kitchen",
                                                           "forecast_b"}
    assert forecast_models_of(inference, "pi-hall") == {"forecast_a", "forecast_b"}


def test_a_node_model_that_does_not_fit_is_refused_and_the_rest_runs(tmp_path: Path) -> None:
    models = tuned_copy(tmp_path, "forecast_b.pi-kitchen", base="forecast_b")
    inference = Inference(models, ("forecast_a",), None,
                          node_models={"pi-kitchen": "forecast_b.pi-kitchen",
                                       "pi-hall": "forecast_a.missing"})
    assert "tuned from 'forecast_b', which this collector does not run" in \
        inference.refused["forecast_b.pi-kitchen"]
    assert "forecast_a.missing" in inference.refused
    assert forecast_models_of(inference, "pi-kitchen") == {"forecast_a"}


def test_node_models_setting_is_node_equals_model() -> None:
    assert parse_node_models(("pi-1=forecast_a.pi-1", " pi-2 = forecast_b.pi-2 ")) == {
        "pi-1": "forecast_a.pi-1", "pi-2": "forecast_b.pi-2"}
    with pytest.raises(ConfigError, match="is not NODE=MODEL"):
        parse_node_models(("forecast_a.pi-1",))


def write_recording(path: Path, node: str, minutes: int, every_s: float = 60.0) -> None:
    lines = []
    for index in range(int(minutes * 60 / every_s)):
        reading = ClimateReading(node, T0 + 30 + index * every_s, index, 20.0 + index % 7,
                                 50.0)
        lines.append(recording_line(RecordedMessage(reading.time, climate_topic(node),
                                                    reading.encode())))
    lines.append(recording_line(RecordedMessage(T0, "predictions/pi-1/forecast", b"{}")))
    path.write_text("\n".join(lines) + "\n")


def test_a_recording_is_averaged_into_the_collectors_steps(tmp_path: Path) -> None:
    path = tmp_path / "kitchen.jsonl"
    write_recording(path, "pi-kitchen", minutes=60 * 24 * 2 + 30)  # a reading a minute
    recording = load_recording(path)
    assert recording.node_id == "pi-kitchen" and len(recording.segments) == 1
    segment = recording.segments[0]
    assert segment.start_time == T0 + 600  # the first step closes at T0 + 10 min
    # Ten readings a step: minute values 20 + (i % 7) averaged, as the collector does.
    assert segment.values[0, 0] == pytest.approx(20.0 + sum(i % 7 for i in range(10)) / 10)
    assert recording.describe()["steps"] == recording.steps >= MIN_STEPS


def test_too_short_a_recording_is_refused_with_what_is_needed(tmp_path: Path) -> None:
    path = tmp_path / "short.jsonl"
    write_recording(path, "pi-kitchen", minutes=60 * 10)
    with pytest.raises(DataError, match=rf"fine-tuning needs at least {MIN_STEPS} \(two days\)"):
        load_recording(path)


def test_a_recording_of_several_nodes_needs_a_node_id(tmp_path: Path) -> None:
    one, two = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_recording(one, "pi-1", minutes=60 * 24 * 2 + 30)
    write_recording(two, "pi-2", minutes=60 * 24 * 2 + 30)
    both = tmp_path / "both.jsonl"
    both.write_text(one.read_text() + two.read_text())
    with pytest.raises(DataError, match=r"readings of 2 nodes \(pi-1, pi-2\): pick one"):
        load_recording(both)
    assert load_recording(both, "pi-2").node_id == "pi-2"

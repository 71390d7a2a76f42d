"""A tiny end-to-end build: a few hundred real readings → shipped model → manifest → evaluate.

Needs the training extra (TensorFlow); skipped without it.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tinyml_core.models import file_sha256, load_forecaster, read_manifest

pytestmark = [pytest.mark.training, pytest.mark.slow]
pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_model_optimization")

SAMPLE_CSV = REPO_ROOT / "samples" / "climate" / "mpi_roof_2024-10-18_2024-10-20.csv"


def recipes_file(tmp_path: Path, max_bytes: int) -> Path:
    """forecast_a's real recipe with the constraints the test wants."""
    text = (REPO_ROOT / "config" / "recipes.toml").read_text()
    section = text[text.index("[forecast_a]"): text.index("[forecast_a_published]")]
    section = section.replace("baseline = \"forecast_a_published\"\n", "")
    start = section.index("constraints = ")
    end = section.index("\n", start)
    section = (section[:start] + "constraints = { temperature_mae = 100, humidity_mae = 100, "
               f"max_bytes = {max_bytes} }}" + section[end:])
    path = tmp_path / "recipes.toml"
    path.write_text(section)
    return path


def build(tmp_path: Path, max_bytes: int, capsys: pytest.CaptureFixture[str]) -> int:
    from training.build import main

    return main(["forecast_a", "--climate-csv", str(SAMPLE_CSV), "--models",
                 str(tmp_path / "models"), "--recipes", str(recipes_file(tmp_path, max_bytes)),
                 "--epochs", "3", "--no-progress", "-q"])


def test_tiny_build_writes_a_verified_model_manifest_and_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(tmp_path, 100_000, capsys) == 0
    models = tmp_path / "models"
    entry = read_manifest(models)["forecast_a"]
    compressed = (models / entry["file"]).read_bytes()
    assert entry["sha256"] == file_sha256(compressed) and entry["size_bytes"] == len(compressed)
    assert zlib.decompress(compressed)[4:8] == b"TFL3"
    assert entry["input"]["window"] == 6 and entry["output"]["steps"] == 3
    assert entry["data"]["readings"] == {"train": 201, "validation": 58, "test": 29}
    assert entry["metrics"]["windows"] == 29 - 8
    assert entry["constraints_met"] is True and entry["seed"] == 42
    assert entry["recipe"]["model"]["architecture"] == "residual_mlp"
    forecaster = load_forecaster(models, "forecast_a")
    window = np.tile([[10.0, 80.0]], (6, 1))[None]
    forecast = forecaster.predict(window, np.array([1_729_339_200.0]))
    assert forecast.shape == (1, 3, 2) and np.isfinite(forecast).all()
    report = (models / "REPORT.md").read_text()
    assert "| **forecast_a** | residual_mlp" in report
    assert (models / "figures" / "forecast_a_test_week.png").stat().st_size > 1000
    assert "forecast_a: MAE T" in capsys.readouterr().out

    from training.evaluate import main as evaluate

    assert evaluate(["forecast_a", "--models", str(models), "--climate-csv", str(SAMPLE_CSV),
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "forecast_a" and result["windows"] == 288 - 8
    assert set(result["mae"]) == set(result["persistence"]) == {"temperature", "humidity"}


def test_build_fails_when_a_constraint_is_not_met(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(tmp_path, 100, capsys) == 1
    assert "max_bytes is" in capsys.readouterr().err
    assert read_manifest(tmp_path / "models")["forecast_a"]["constraints_met"] is False


def test_fine_tuning_on_a_recording_says_whether_it_helped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.build import main

    assert build(tmp_path, 1500, capsys) == 0
    capsys.readouterr()
    models = tmp_path / "models"
    status = main(["forecast_a", "--climate-csv", str(SAMPLE_CSV), "--models", str(models),
                   "--recipes", str(recipes_file(tmp_path, 1500)), "--epochs", "3",
                   "--from-recording", str(SAMPLE_CSV), "--node-id", "pi-test", "--no-progress",
                   "-q"])
    out = capsys.readouterr().out
    assert status == 0
    assert "forecast_a.pi-test: on the recording's last 20 %" in out
    assert "shipped" in out and "tuned" in out and "persistence" in out
    manifest = read_manifest(models)
    if "wrote" in out:
        entry = manifest["forecast_a.pi-test"]
        assert entry["base_model"] == "forecast_a"
        assert entry["recording"]["node_id"] == "pi-test"
        assert len(entry["recording"]["sha256"]) == 64
        load_forecaster(models, "forecast_a.pi-test")
    else:
        assert "nothing written, keep forecast_a" in out
        assert "forecast_a.pi-test" not in manifest


def test_another_seed_is_another_training_and_the_manifest_says_which(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.build import main

    models = tmp_path / "models"
    assert main(["forecast_a", "--climate-csv", str(SAMPLE_CSV), "--models", str(models),
                 "--recipes", str(recipes_file(tmp_path, 100_000)), "--epochs", "3",
                 "--seed", "5", "--no-progress", "-q"]) == 0
    entry = read_manifest(models)["forecast_a"]
    assert entry["seed"] == 5 and entry["recipe"]["seed"] == 5
    assert build(tmp_path, 100_000, capsys) == 0  # the recipe's own seed, 42
    other = read_manifest(models)["forecast_a"]
    assert other["seed"] == 42 and other["sha256"] != entry["sha256"]

"""`training.evaluate` and `training.latency` on the shipped models and bundled samples.

These commands need no TensorFlow (the latency reference column does, and is skipped
without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tinyml_core.frontend import resample, to_float
from tinyml_core.recordings import read_wav, write_wav

SPEECH = REPO_ROOT / "samples" / "speech"
SAMPLE_CSV = REPO_ROOT / "samples" / "climate" / "mpi_roof_2024-10-18_2024-10-20.csv"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)


def evaluate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    from training.evaluate import main

    assert main([*args, "--json", "-q"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_forecaster_on_a_csv_beats_persistence(capsys: pytest.CaptureFixture[str]) -> None:
    result = evaluate_json(capsys, "forecast_a", "--climate-csv", str(SAMPLE_CSV))
    assert result["windows"] == 288 - 8
    mae, persistence = result["mae"], result["persistence"]
    assert isinstance(mae, dict) and isinstance(persistence, dict)
    assert mae["temperature"] < persistence["temperature"]


def test_forecaster_as_a_dht11_reads_the_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    recorded = evaluate_json(capsys, "forecast_a", "--climate-csv", str(SAMPLE_CSV))
    dht11 = evaluate_json(capsys, "forecast_a", "--climate-csv", str(SAMPLE_CSV),
                          "--sensor", "dht11")
    assert (recorded["sensor"], dht11["sensor"]) == ("none", "dht11")
    # Targets stay as recorded, so persistence from whole degrees is worse than from
    # the station's hundredths; the skill is reported against the same inputs.
    for result in (recorded, dht11):
        mae, base, skill = result["mae"], result["persistence"], result["skill"]
        assert isinstance(mae, dict) and isinstance(base, dict) and isinstance(skill, dict)
        assert skill["humidity"] == pytest.approx(1 - mae["humidity"] / base["humidity"])
    assert dht11["persistence"]["temperature"] > recorded["persistence"]["temperature"]  # type: ignore[index]


def test_a_node_reading_more_often_gives_inputs_nearer_the_recording(
        capsys: pytest.CaptureFixture[str]) -> None:
    """--reads-per-step N: each step as the collector averages N noisy, rounded DHT11 reads;
    many reads recover what one read's rounding and noise lose, and a seed repeats a run."""
    def persistence(*args: str) -> dict[str, float]:
        result = evaluate_json(capsys, "forecast_a", "--climate-csv", str(SAMPLE_CSV),
                               "--sensor", "dht11", *args)
        return result["persistence"]  # type: ignore[return-value]

    one, sixty = persistence("--reads-per-step", "1"), persistence("--reads-per-step", "60")
    # Persistence repeats the last input against the recorded target: its error is the
    # inputs' distance from the recording, which averaging shrinks.
    assert sixty["temperature"] < one["temperature"]
    assert sixty["humidity"] < one["humidity"]
    assert persistence("--reads-per-step", "1") == one  # seeded
    assert persistence("--reads-per-step", "1", "--seed", "5") != one
    lossy = evaluate_json(capsys, "forecast_a", "--climate-csv", str(SAMPLE_CSV), "--sensor",
                          "dht11", "--reads-per-step", "60", "--dropped", "0.5")
    assert (lossy["reads_per_step"], lossy["dropped"]) == (60, 0.5)
    for args, message in ((["--reads-per-step", "0"], "a step has at least one read"),
                          (["--dropped", "0.2"], "--dropped needs --reads-per-step"),
                          (["--reads-per-step", "3", "--dropped", "1"], "in [0, 1)")):
        done = run("-m", "training.evaluate", "forecast_a", "--climate-csv", str(SAMPLE_CSV),
                   *args)
        assert done.returncode == 2 and message in done.stderr


def test_an_unknown_sensor_is_a_clear_error() -> None:
    done = run("-m", "training.evaluate", "forecast_a", "--climate-csv", str(SAMPLE_CSV),
               "--sensor", "bme280")
    assert done.returncode == 1
    assert "unknown sensor 'bme280'; known: none, dht11, dht22" in done.stderr


@pytest.mark.parametrize("model", ["kws_a", "kws_b", "kws_c", "kws_e"])
def test_keyword_models_recognise_the_bundled_clips(
        model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = evaluate_json(capsys, model, "--speech-dir", str(SPEECH),
                           "--confusion-png", str(tmp_path / "c.png"))
    assert result["clips"] == 16
    # Test-split clips; the models score ~93-94 % on all 800, so 16 clips may hold 2-4 misses
    # (right/122c5aa7 peaks at -61 dBFS and every model misses it); a broken model gets ~2.
    assert float(result["accuracy"]) >= 12 / 16
    assert list(result["recall"]) == ["stop", "up", "yes", "right", "left", "no", "down", "go"]
    assert (tmp_path / "c.png").stat().st_size > 1000
    # _unknown_/ holds other words: how many of them get a keyword label is its own number.
    assert result["unknown_clips"] == 4 and result["unknown_as_keyword"] <= 0.25


def test_a_folder_becomes_a_stream_through_capture_and_collector(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.evaluate import main

    assert main(["kws_b", "--speech-dir", str(SPEECH), "--stream",
                 "--confusion-png", str(tmp_path / "c.png")]) == 0
    output = capsys.readouterr().out
    assert "stream: " in output and "16 keywords, 4 other sounds" in output
    table, advice = output.split("false accepts by what was there")[1].split("\n\n")[:2]
    recalls = [float(line.split()[1].rstrip("%")) for line in table.splitlines()[1:]]
    assert len(recalls) >= 6 and recalls == sorted(recalls, reverse=True)  # stricter, fewer
    # 16 words in a few minutes: one false accept would be 40 an hour, so no advice
    assert advice.startswith("1.5 min are too short to choose a threshold")


def test_any_sample_rate_gives_the_same_answers(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for path in SPEECH.glob("*/*.wav"):
        rate, clip = read_wav(path)
        louder = resample(to_float(clip), rate, 48000)
        target = tmp_path / path.parent.name / path.name
        target.parent.mkdir(exist_ok=True)
        write_wav(target, 48000, np.round(louder * 32767).clip(-32768, 32767).astype(np.int16))
    (tmp_path / "not-a-label").mkdir()
    at_16k = evaluate_json(capsys, "kws_b", "--speech-dir", str(SPEECH),
                           "--confusion-png", str(tmp_path / "a.png"))
    at_48k = evaluate_json(capsys, "kws_b", "--speech-dir", str(tmp_path),
                           "--confusion-png", str(tmp_path / "b.png"))
    assert at_48k["clips"] == 16
    assert abs(float(at_48k["accuracy"]) - float(at_16k["accuracy"])) <= 1 / 16


def test_human_output_has_recall_and_a_confusion_matrix(tmp_path: Path) -> None:
    result = run("-m", "training.evaluate", "kws_c", "--speech-dir", str(SPEECH),
                 "--confusion-png", str(tmp_path / "c.png"))
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "confusion (rows: true" in result.stdout
    assert "Traceback" not in result.stderr
    pytest.importorskip("matplotlib")
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")


def test_no_picture_is_left_in_the_working_folder_unless_asked_for(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "training.evaluate", "kws_c",
                             "--speech-dir", str(SPEECH)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["kws_b", "--speech-dir", "/nonexistent"], "not a folder"),
    (["kws_b"], "needs --speech-dir"),
    (["forecast_a"], "needs --climate-csv"),
    (["forecast_a", "--climate-csv", "/nonexistent.csv"], "nonexistent.csv"),
    (["kws_z", "--speech-dir", "."], "kws_z: not in"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    result = run("-m", "training.evaluate", *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_latency_json_has_the_course_fields() -> None:
    result = run("-m", "training.latency", "kws_c", "--runs", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "kws_c" and report["runs"] == 3
    assert 0 < report["inference_ms"] < report["total_ms"]
    if report["reference_total_ms"] is not None:  # TensorFlow and scipy installed
        assert report["ratio"] == pytest.approx(report["reference_total_ms"] / report["total_ms"],
                                                rel=0.05)


def test_a_stream_long_enough_to_measure_suggests_a_threshold_for_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import training.evaluate as evaluate

    monkeypatch.setattr(evaluate, "MIN_HOURS_TO_CHOOSE", 0.0)  # the bundled 16 words count
    assert evaluate.main(["kws_b", "--speech-dir", str(SPEECH), "--stream",
                          "--confusion-png", str(tmp_path / "c.png")]) == 0
    advice = capsys.readouterr().out.split("on this stream the most keywords at no more than "
                                           "5 false accepts an hour: threshold ")[1]
    chosen = float(advice.split()[0])
    assert 0.4 <= chosen <= 0.96 and f"set keyword_threshold = {chosen:.2f}" in advice
    assert "0.0 an hour" in advice  # the one false accept of this stream is below it


def test_evaluate_answers_as_an_enrolled_node_does(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    import shutil

    from collector.__main__ import main as collector_main

    folder = tmp_path / "ann"
    for word in ("go", "up", "right", "_unknown_"):  # each with a take kws_b gets wrong
        shutil.copytree(SPEECH / word, folder / word)
    config = tmp_path / "collector.toml"
    store = tmp_path / "enrolled.json"
    config.write_text(f'[collector]\nenrollment_path = "{store}"\nkeyword_model = "kws_b"\n'
                      f'models_dir = "{REPO_ROOT / "models"}"\n')
    assert collector_main(["enroll", "kitchen", str(folder), "--config", str(config)]) == 0
    capsys.readouterr()
    shipped = evaluate_json(capsys, "kws_b", "--speech-dir", str(SPEECH))
    enrolled = evaluate_json(capsys, "kws_b", "--speech-dir", str(SPEECH), "--enrolled",
                             str(store), "--node", "kitchen")
    recall_before, recall_after = shipped["recall"], enrolled["recall"]
    assert isinstance(recall_before, dict) and isinstance(recall_after, dict)
    # The enrolled words' takes (the model's mistakes among them) are answered better.
    assert sum(recall_after[w] for w in ("go", "up", "right")) > \
        sum(recall_before[w] for w in ("go", "up", "right"))
    from training.evaluate import main

    with pytest.raises(Exception, match="hallway is not enrolled"):
        main(["kws_b", "--speech-dir", str(SPEECH), "--enrolled", str(store), "--node",
              "hallway"])

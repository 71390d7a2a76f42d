"""Climate data for the forecasters: sources, segments, split, windows, metric (no TensorFlow)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA
from training import climate
from training.climate import DataError, Segment

SAMPLE_CSV = REPO_ROOT / "samples" / "climate" / "mpi_roof_2024-10-18_2024-10-20.csv"
JENA_FIRST_4000 = SHARED_DATA / "climate" / "jena_climate_2009_2016_first4000.csv"
HEADER = '"Date Time","p (mbar)","T (degC)","rh (%)"\n'


def write_csv(path: Path, rows: list[tuple[str, float, float]]) -> Path:
    lines = [HEADER] + [f"{time}, 990.0, {t:.2f}, {rh:.1f}\n" for time, t, rh in rows]
    path.write_text("".join(lines), encoding="iso-8859-1")
    return path


def times(start_minute: int, count: int, step: int = 10) -> list[str]:
    out = []
    for index in range(count):
        minutes = start_minute + index * step
        out.append(f"01.01.2020 {minutes // 60:02d}:{minutes % 60:02d}:00")
    return out


def test_a_time_gap_starts_a_new_segment_and_repeated_rows_are_dropped(tmp_path: Path) -> None:
    stamps = times(0, 10) + times(200, 5)  # gap: 01:30 → 03:20
    stamps.insert(4, stamps[3])  # a repeated timestamp, as in the canonical file
    rows = [(stamp, float(i), 50.0 + i) for i, stamp in enumerate(stamps)]
    parts = climate.load_segments([write_csv(tmp_path / "a.csv", rows)])
    assert [len(part) for part in parts] == [10, 5]
    assert parts[0].values[4, 0] == 5.0  # the repeat (value 4) was dropped, the first kept


def test_windows_never_span_segments(tmp_path: Path) -> None:
    first = Segment("a", 0.0, np.arange(20, dtype=float).reshape(10, 2))
    second = Segment("b", 1e6, 100 + np.arange(14, dtype=float).reshape(7, 2))
    inputs, labels = climate.windows([first, second], steps=3)
    assert inputs.shape == (2, 6, 2)  # the 7-reading segment is too short for 6 + 3
    inputs, labels = climate.windows([first, second], steps=1)
    assert len(inputs) == (10 - 7 + 1) + (7 - 7 + 1)
    for window, label in zip(inputs, labels, strict=True):
        together = np.concatenate([window, label])
        assert (np.diff(together[:, 0]) == 2).all()  # consecutive readings of one segment
    assert labels.shape[1:] == (1, 2)


def test_split_is_chronological_70_20_10_and_cuts_segments() -> None:
    early = Segment("a", 0.0, np.zeros((60, 2)))
    late = Segment("b", 1e7, np.ones((40, 2)))
    parts = climate.split_segments([early, late])
    assert [sum(len(s) for s in parts[name]) for name in climate.PARTS] == [70, 20, 10]
    assert [len(s) for s in parts["train"]] == [60, 10]  # the late file is cut at 70 %
    assert parts["validation"][0].start_time == 1e7 + 10 * climate.STEP_S
    assert all(s.values.mean() == 1 for s in parts["test"])


def test_normalization_uses_only_the_parts_given() -> None:
    train = [Segment("a", 0.0, np.array([[0.0, 10.0], [2.0, 30.0]]))]
    mean, std = climate.normalization(train)
    assert mean.tolist() == [1.0, 20.0] and std.tolist() == [1.0, 10.0]


def test_metric_gives_each_feature_over_all_steps_and_persistence_repeats_last() -> None:
    inputs = np.zeros((2, 6, 2))
    inputs[:, -1] = [[1.0, 50.0], [2.0, 60.0]]
    forecast = climate.persistence(inputs, 3)
    assert forecast.shape == (2, 3, 2) and (forecast[0] == [1.0, 50.0]).all()
    labels = forecast + np.array([0.5, -2.0])
    labels[1, 2] += [1.5, 0.0]
    mae = climate.mae_per_feature(forecast, labels)
    assert mae == pytest.approx({"temperature": (0.5 * 5 + 2.0) / 6, "humidity": 2.0})


def test_skill_is_one_for_a_perfect_forecast_and_zero_for_persistence() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(20, 3, (50, 6, 2)).astype(np.float32)
    labels = inputs[:, -1:, :] + rng.normal(0, 0.5, (50, 3, 2)).astype(np.float32)
    perfect = climate.against_persistence(labels, inputs, labels)
    assert perfect["skill"] == pytest.approx({"temperature": 1.0, "humidity": 1.0})
    repeated = climate.against_persistence(climate.persistence(inputs, 3), inputs, labels)
    assert repeated["skill"] == {"temperature": 0.0, "humidity": 0.0}
    assert repeated["mae"] == repeated["persistence"]


def test_the_ceilings_linear_model_learns_a_steady_trend_that_persistence_misses() -> None:
    from training.ceiling import features, linear

    rng = np.random.default_rng(1)
    slopes = rng.uniform(-0.3, 0.3, (400, 1, 2))
    series = rng.uniform(0, 30, (400, 1, 2)) + slopes * np.arange(9)[None, :, None]
    inputs, labels = series[:, :6].astype(np.float32), series[:, 6:].astype(np.float32)
    end_times = rng.uniform(1.6e9, 1.7e9, 400)
    feature_rows, last = features(inputs, end_times)
    assert feature_rows.shape == (400, 5 * 2 + 2 + 2 + 2)  # changes, last, day, year
    np.testing.assert_array_equal(last, inputs[:, -1:])
    predicted = linear((inputs[:300], end_times[:300], labels[:300]),
                       (inputs[300:], end_times[300:]), steps=3)
    result = climate.against_persistence(predicted, inputs[300:], labels[300:])
    assert result["persistence"]["temperature"] > 0.1
    assert min(result["skill"].values()) > 0.99


def test_bundled_sample_is_one_segment_of_288_readings() -> None:
    parts = climate.load_segments([SAMPLE_CSV])
    assert [len(part) for part in parts] == [288]
    assert climate.windows(parts, steps=9)[0].shape == (288 - 14, 6, 2)


@pytest.mark.skipif(not JENA_FIRST_4000.exists(), reason="../shared/data is not here")
def test_canonical_jena_rows_load() -> None:
    parts = climate.load_segments([JENA_FIRST_4000])
    assert sum(len(part) for part in parts) <= 4000
    assert parts[0].start_time == pytest.approx(1230768600.0)  # 2009-01-01 00:10 UTC


def test_several_files_are_sorted_by_time(tmp_path: Path) -> None:
    late = write_csv(tmp_path / "late.csv", [(t, 1.0, 50.0) for t in times(600, 8)])
    early = write_csv(tmp_path / "early.csv", [(t, 2.0, 60.0) for t in times(0, 8)])
    parts = climate.load_segments([late, early])
    assert [p.values[0, 0] for p in parts] == [2.0, 1.0]


def test_a_bad_file_is_named_in_the_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('"Date Time","T (degC)"\n01.01.2020 00:10:00,1.0\n')
    with pytest.raises(Exception, match=r"bad\.csv.*rh \(%\)"):
        climate.load_segments([bad])
    with pytest.raises(DataError, match="no climate files"):
        climate.load_segments([])


def jena_zip(csv_text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(climate.JENA_CSV, csv_text)
    return buffer.getvalue()


def test_jena_local_zip_is_unpacked_into_the_cache(tmp_path: Path) -> None:
    archive = tmp_path / "jena.zip"
    archive.write_bytes(jena_zip(HEADER + "01.01.2009 00:10:00, 996.5, -8.02, 93.3\n"))
    path = climate.jena_csv(archive, cache=tmp_path / "cache")
    assert path == tmp_path / "cache" / climate.JENA_CSV
    assert "-8.02" in path.read_text()


def test_jena_download_offline_says_how_to_pass_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--jena PATH"):
        climate.jena_csv(cache=tmp_path, url="http://127.0.0.1:9/jena.zip")


def test_jena_cached_archive_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = jena_zip(HEADER + "01.01.2009 00:10:00, 996.5, -8.02, 93.3\n")
    monkeypatch.setattr(climate, "JENA_ZIP_BYTES", len(data))
    archive = tmp_path / (climate.JENA_CSV + ".zip")
    archive.write_bytes(data)
    record = archive.with_name(archive.name + ".sha256")
    record.write_text(hashlib.sha256(data).hexdigest())
    assert climate.jena_csv(cache=tmp_path).exists()
    (tmp_path / climate.JENA_CSV).unlink()
    record.write_text("0" * 64)
    with pytest.raises(DataError, match="does not match"):
        climate.jena_csv(cache=tmp_path)
    archive.write_bytes(data[:-1])
    with pytest.raises(DataError, match="bytes"):
        climate.jena_csv(cache=tmp_path)


def test_missing_local_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        climate.jena_csv(tmp_path / "nope.csv")

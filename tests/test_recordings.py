"""Readers of recorded data: Jena-format CSV files and WAV clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA
from tinyml_core.recordings import RecordingError, read_climate_csv, read_wav, write_wav

SAMPLE_CSV = REPO_ROOT / "samples" / "climate" / "mpi_roof_2024-10-18_2024-10-20.csv"


def write_bytes(tmp_path: Path, data: bytes, name: str = "x.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bundled_sample_reads_in_order() -> None:
    series = read_climate_csv(SAMPLE_CSV)
    assert len(series) == 288
    assert np.all(np.diff(series.times) == 600)
    assert (series.temperature[0], series.humidity[0]) == (9.6, 93.6)


def test_quoted_padded_iso_8859_1_with_columns_in_any_order(tmp_path: Path) -> None:
    data = ('"rh (%)","SWDR (W/m\u00b2)","Date Time","T (degC)"\n'
            '  81.40,   0.00,01.07.2021 00:10:00,   16.07\n'
            '  81.90,   0.00,01.07.2021 00:20:00,   16.02\n\n').encode("iso-8859-1")
    series = read_climate_csv(write_bytes(tmp_path, data))
    assert series.temperature.tolist() == [16.07, 16.02]
    assert series.humidity.tolist() == [81.4, 81.9]
    assert series.times[1] - series.times[0] == 600
    assert series.times[0] == 1625098200.0  # 2021-07-01 00:10 UTC


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "no column"),
        (b"Date Time,T (degC)\n01.01.2009 00:10:00,1\n", "no column 'rh (%)'"),
        (b"Date Time,T (degC),rh (%)\n2009-01-01 00:10,1,2\n", ":2: '2009-01-01 00:10' is not"),
        (b"Date Time,T (degC),rh (%)\n01.01.2009 00:10:00,warm,2\n", ":2: T (degC) 'warm'"),
        (b"Date Time,T (degC),rh (%)\n01.01.2009 00:10:00,nan,2\n", ":2: T (degC) is nan"),
        (b"Date Time,T (degC),rh (%)\n01.01.2009 00:10:00,1\n", ":2: 2 fields"),
        (b"Date Time,T (degC),rh (%)\n", "holds no readings"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path: Path, content: bytes, words: str) -> None:
    path = write_bytes(tmp_path, content)
    with pytest.raises(RecordingError) as caught:
        read_climate_csv(path)
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot be read"):
        read_climate_csv(tmp_path / "absent.csv")


@pytest.mark.skipif(not (SHARED_DATA / "climate").is_dir(), reason="needs ../shared/data")
def test_real_jena_files_read() -> None:
    first = read_climate_csv(SHARED_DATA / "climate" / "jena_climate_2009_2016_first4000.csv")
    roof = read_climate_csv(SHARED_DATA / "climate" / "mpi_roof_2021-07_2021-11.csv")
    assert (len(first), len(roof)) == (4000, 21698)
    assert first.temperature[0] == -8.02


def test_wav_round_trip_and_stereo_mixdown(tmp_path: Path) -> None:
    samples = np.array([0, 1000, -1000, 32767], dtype=np.int16)
    write_wav(tmp_path / "a.wav", 8000, samples)
    rate, read = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and read.tolist() == samples.tolist()

    import wave
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as stereo:
        stereo.setnchannels(2)
        stereo.setsampwidth(2)
        stereo.setframerate(16000)
        stereo.writeframes(np.array([100, 300, -100, -300], dtype="<i2").tobytes())
    assert read_wav(tmp_path / "stereo.wav")[1].tolist() == [200, -200]


def test_bad_wav_files(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="file not found"):
        read_wav(tmp_path / "absent.wav")
    with pytest.raises(RecordingError, match="not a readable WAV"):
        read_wav(write_bytes(tmp_path, b"RIFF\x00\x00garbage", "bad.wav"))
    import wave
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as eight:
        eight.setnchannels(1)
        eight.setsampwidth(1)
        eight.setframerate(8000)
        eight.writeframes(b"\x80\x81")
    with pytest.raises(RecordingError, match="8-bit samples"):
        read_wav(tmp_path / "8bit.wav")

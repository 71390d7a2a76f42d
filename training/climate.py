"""Climate data for the forecasters: files → gap-free segments → split → windows.

Sources, in the Jena climate CSV format (read by tinyml_core.recordings):
- the canonical Jena file (2009–2016), downloaded once from its canonical address, checked
  and cached; or given as a local path;
- any other CSV in that format, e.g. the MPI Jena roof files the shipped models use.

Every file, and every run of readings without a time gap, is a segment; a window never
spans two segments. The split is chronological over all readings (70/20/10 by default) and
cuts segments at its boundaries, so no window mixes training and test readings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyml_core.errors import TinyMLError
from tinyml_core.recordings import ClimateSeries, read_climate_csv

from . import DATA_DIR, SHARED_DATA_DIR

log = logging.getLogger(__name__)

FEATURES = ("temperature", "humidity")
STEP_S = 600.0
WINDOW = 6
SPLIT = (0.7, 0.2, 0.1)
PARTS = ("train", "validation", "test")

JENA_URL = ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
            "jena_climate_2009_2016.csv.zip")
JENA_CSV = "jena_climate_2009_2016.csv"
# The size is known from TensorFlow's tutorial logs. The sha256 could not be pinned from this
# machine (no download possible): the first verified download records it next to the cache
# and every later use is checked against that record.
JENA_ZIP_BYTES = 13_568_290
JENA_ZIP_SHA256: str | None = None
# The files the shipped forecasters are trained on, looked up in DATA_DIRS when not given.
MPI_ROOF_FILES = ("mpi_roof_2021-07_2021-11.csv", "mpi_roof_2024-06_2024-10.csv")
DATA_DIRS = (DATA_DIR / "climate", SHARED_DATA_DIR / "climate")


class DataError(TinyMLError):
    """Training data that cannot be found, fetched or used."""


# ---------------------------------------------------------------- sources


def cache_dir() -> Path:
    base = os.environ.get("TINYML_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "tinyml-mqtt" if base else Path.home() / ".cache" / "tinyml-mqtt"


def jena_csv(local_path: Path | None = None, cache: Path | None = None,
             url: str = JENA_URL) -> Path:
    """The canonical Jena CSV: ``local_path`` (a .csv or the .zip), else the cache, else a
    download (size and checksum verified, then cached)."""
    if local_path is not None:
        if not local_path.exists():
            raise DataError(f"{local_path}: no such file")
        return _unzip(local_path, (cache or cache_dir())) if local_path.suffix == ".zip" \
            else local_path
    cache = cache or cache_dir()
    archive = cache / (JENA_CSV + ".zip")
    if archive.exists():
        _verify(archive.read_bytes(), archive)
        return _unzip(archive, cache)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read(JENA_ZIP_BYTES + 1)
    except OSError as exc:
        raise DataError(
            f"cannot download the Jena climate file from {url} ({exc}). Offline, pass a "
            f"local copy: --jena PATH (the .zip or {JENA_CSV}), or other files in that format "
            "with --climate-csv FILE") from None
    _verify(data, archive, fresh=True)
    cache.mkdir(parents=True, exist_ok=True)
    temporary = archive.with_suffix(".part")
    temporary.write_bytes(data)
    temporary.replace(archive)
    return _unzip(archive, cache)


def _verify(data: bytes, archive: Path, fresh: bool = False) -> None:
    if len(data) != JENA_ZIP_BYTES:
        raise DataError(f"{archive}: {len(data)} bytes, the Jena archive has {JENA_ZIP_BYTES};"
                        " delete it to download again")
    digest = hashlib.sha256(data).hexdigest()
    record = archive.with_name(archive.name + ".sha256")
    expected = JENA_ZIP_SHA256 or (record.read_text().strip() if record.exists() else None)
    if expected and digest != expected:
        raise DataError(f"{archive}: sha256 {digest} does not match {expected}; the file is "
                        "corrupt or not the canonical archive")
    if fresh and expected is None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(digest + "\n")
        log.info("recorded sha256 %s of the Jena archive in %s", digest, record)


def _unzip(archive: Path, cache: Path) -> Path:
    target = cache / JENA_CSV
    if target.exists():
        return target
    try:
        with zipfile.ZipFile(archive) as bundle:
            member = next(n for n in bundle.namelist() if n.endswith(JENA_CSV))
            cache.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source, open(target.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(source, out)
    except (zipfile.BadZipFile, StopIteration, OSError) as exc:
        raise DataError(f"{archive}: not a zip holding {JENA_CSV} ({exc})") from None
    target.with_suffix(".part").replace(target)
    return target


def default_climate_files() -> list[Path]:
    """The MPI Jena roof files, from data/climate/ or ../shared/data/climate/."""
    for directory in DATA_DIRS:
        paths = [directory / name for name in MPI_ROOF_FILES]
        if all(path.exists() for path in paths):
            return paths
    raise DataError(
        "the MPI Jena roof files (" + ", ".join(MPI_ROOF_FILES) + ") are not in "
        + " or ".join(str(d) for d in DATA_DIRS)
        + ": pass files with --climate-csv FILE (repeatable) or the canonical file with --jena")


# ---------------------------------------------------------------- segments and split


@dataclass(frozen=True)
class Segment:
    """Consecutive readings exactly ``STEP_S`` apart: values[i] = (temperature, humidity)."""

    source: str
    start_time: float
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def segments(series: ClimateSeries, step_s: float = STEP_S) -> list[Segment]:
    """Cut a file's readings at every time gap; repeated timestamps keep the first reading."""
    keep = np.concatenate([[True], np.diff(series.times) != 0])
    times = series.times[keep]
    values = np.stack([series.temperature[keep], series.humidity[keep]], axis=1)
    breaks = np.flatnonzero(np.abs(np.diff(times) - step_s) > 1e-6) + 1
    return [Segment(series.source, float(times[start]), values[start:stop])
            for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(times)], strict=True)]


def load_segments(paths: Sequence[Path], step_s: float = STEP_S) -> list[Segment]:
    if not paths:
        raise DataError("no climate files given")
    found: list[Segment] = []
    for path in paths:
        found += segments(read_climate_csv(path), step_s)
    return sorted(found, key=lambda segment: segment.start_time)


def split_segments(parts: Sequence[Segment], fractions: Sequence[float] = SPLIT
                   ) -> dict[str, list[Segment]]:
    """Chronological split by reading count: the first 70 % of readings train, and so on."""
    total = sum(len(segment) for segment in parts)
    # round first: 0.7 + 0.2 is 0.8999… in binary, which would move a reading
    bounds = np.floor(np.round(np.cumsum([0.0, *fractions]) * total, 6)).astype(int)
    bounds[-1] = total
    result: dict[str, list[Segment]] = {name: [] for name in PARTS}
    offset = 0
    for segment in parts:
        for name, low, high in zip(PARTS, bounds[:-1], bounds[1:], strict=True):
            start, stop = max(low - offset, 0), min(high - offset, len(segment))
            if stop > start:
                result[name].append(Segment(segment.source,
                                            segment.start_time + start * STEP_S,
                                            segment.values[start:stop]))
        offset += len(segment)
    return result


def windows(parts: Sequence[Segment], steps: int, window: int = WINDOW
            ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs [N, window, 2] and labels [N, steps, 2] (physical units) from every segment."""
    inputs, labels = [], []
    for segment in parts:
        count = len(segment) - window - steps + 1
        if count <= 0:
            continue
        view = np.lib.stride_tricks.sliding_window_view(segment.values, window + steps, axis=0)
        view = view.transpose(0, 2, 1)  # [count, window + steps, 2]
        inputs.append(view[:, :window])
        labels.append(view[:, window:])
    if not inputs:
        return np.zeros((0, window, 2), np.float32), np.zeros((0, steps, 2), np.float32)
    return (np.concatenate(inputs).astype(np.float32),
            np.concatenate(labels).astype(np.float32))


def window_end_times(parts: Sequence[Segment], steps: int, window: int = WINDOW) -> np.ndarray:
    """The time of each window's last reading, in the order of :func:`windows`."""
    times = []
    for segment in parts:
        count = len(segment) - window - steps + 1
        if count > 0:
            times.append(segment.start_time + (np.arange(count) + window - 1) * STEP_S)
    return np.concatenate(times) if times else np.zeros(0)


def normalization(parts: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of the readings in ``parts``."""
    values = np.concatenate([segment.values for segment in parts])
    return values.mean(axis=0), values.std(axis=0)


# ---------------------------------------------------------------- metrics


def mae_per_feature(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MAE of each feature over all windows and all output steps."""
    error = np.abs(np.asarray(predictions, np.float64) - np.asarray(labels, np.float64))
    per_feature = error.reshape(-1, error.shape[-1]).mean(axis=0)
    return {name: float(value) for name, value in zip(FEATURES, per_feature, strict=True)}


def persistence(inputs: np.ndarray, steps: int) -> np.ndarray:
    """The forecast "nothing changes": the last reading repeated ``steps`` times."""
    return np.repeat(inputs[:, -1:, :], steps, axis=1)


def against_persistence(predictions: np.ndarray, inputs: np.ndarray, labels: np.ndarray
                        ) -> dict[str, dict[str, float]]:
    """MAE of ``predictions``, of persistence from the same ``inputs``, and the skill
    1 - MAE / persistence MAE (per feature; above 0: better than repeating the last reading)."""
    mae = mae_per_feature(predictions, labels)
    base = mae_per_feature(persistence(inputs, labels.shape[1]), labels)
    return {"mae": mae, "persistence": base,
            "skill": {feature: 1 - mae[feature] / base[feature] for feature in mae}}


def describe(paths: Sequence[Path]) -> list[dict[str, object]]:
    """Name, size and sha256 of each data file, for the manifest."""
    described = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        described.append({"file": Path(path).name, "bytes": Path(path).stat().st_size,
                          "sha256": digest.hexdigest()})
    return described


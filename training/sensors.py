"""Climate sensors as data (config/sensors.toml): what their readings look like.

The forecasters are trained on weather-station data with 0.01 degree resolution; a DHT11
reports whole degrees and percent. ``quantize`` turns recorded values into what a sensor
would report, for evaluation ("inputs as the sensor reads them, targets as recorded") and for
sensor-aware training.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyml_core.errors import ConfigError

SENSORS_PATH = Path(__file__).resolve().parent.parent / "config" / "sensors.toml"


@dataclass(frozen=True)
class Sensor:
    name: str
    resolution: tuple[float, float]  # temperature, humidity
    noise: tuple[float, float]
    description: str

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """``values`` [..., 2] (°C, %RH) as this sensor reports them: rounded to its resolution
        (humidity also kept within 0-100 %)."""
        out = np.array(values, dtype=np.float32, copy=True)
        for feature, step in enumerate(self.resolution):
            if step > 0:
                out[..., feature] = np.round(out[..., feature] / step) * step
        out[..., 1] = np.clip(out[..., 1], 0.0, 100.0)
        return out


    def collected(self, values: np.ndarray, rng: np.random.Generator,
                  readings_per_step: tuple[int, int] = (1, 30),
                  dropped: float = 0.1, noise_scale: np.ndarray | None = None) -> np.ndarray:
        """``values`` [N, window, 2] (°C, %RH, one per step) as the collector averages them from
        this sensor: per step, a random number of reads (``readings_per_step``, each lost with
        probability ``dropped``, at least one kept), each with the sensor's noise (times
        ``noise_scale`` [N] when given: sensors differ) and rounded to its resolution. Averaging
        noisy rounded reads recovers some of what rounding lost."""
        values = np.asarray(values, np.float32)
        low, high = readings_per_step
        counts = rng.integers(low, high + 1, size=values.shape[:2])
        counts = np.maximum(1, rng.binomial(counts, 1.0 - dropped))[..., None]
        total = np.zeros_like(values)
        noise = np.asarray(self.noise, np.float32)
        if noise_scale is not None:
            noise = noise * np.asarray(noise_scale, np.float32)[:, None, None]
        for read in range(high):
            reading = self.quantize(values + rng.standard_normal(values.shape, np.float32) * noise)
            total += np.where(read < counts, reading, 0.0)
        return (total / counts).astype(np.float32)


def load_sensors(path: Path = SENSORS_PATH) -> dict[str, Sensor]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    sensors = {}
    for name, section in document.items():
        try:
            resolution = tuple(float(v) for v in section["resolution"])
            noise = tuple(float(v) for v in section["noise"])
            description = str(section["description"])
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{path}: [{name}] needs resolution, noise (two numbers each) and "
                              f"description ({error})") from None
        if len(resolution) != 2 or len(noise) != 2 or min(resolution + noise) < 0:
            raise ConfigError(f"{path}: [{name}] resolution and noise are two numbers >= 0")
        sensors[name] = Sensor(name, resolution, noise, description)  # type: ignore[arg-type]
    return sensors


def sensor(name: str, path: Path = SENSORS_PATH) -> Sensor:
    sensors = load_sensors(path)
    if name not in sensors:
        raise ConfigError(f"unknown sensor {name!r}; known: {', '.join(sensors)} ({path})")
    return sensors[name]

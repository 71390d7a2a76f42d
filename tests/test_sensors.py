"""The sensor table (config/sensors.toml) and what a sensor makes of recorded values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinyml_core.errors import ConfigError
from training.sensors import load_sensors, sensor


def test_the_table_has_the_sensors_the_docs_name() -> None:
    sensors = load_sensors()
    assert set(sensors) == {"none", "dht11", "dht22"}
    assert sensors["dht11"].resolution == (1.0, 1.0)
    assert sensors["dht22"].resolution == (0.1, 0.1)
    assert sensors["none"].resolution == (0.0, 0.0)


def test_a_dht11_reports_whole_degrees_and_percent_within_0_and_100() -> None:
    values = np.array([[[20.49, 55.5], [20.51, 100.4], [-3.6, 0.2]]], np.float32)
    assert sensor("dht11").quantize(values).tolist() == [[[20.0, 56.0], [21.0, 100.0],
                                                          [-4.0, 0.0]]]
    assert np.allclose(sensor("none").quantize(values)[..., 0], values[..., 0])


def test_averaging_many_noisy_reads_recovers_what_rounding_lost() -> None:
    rng = np.random.default_rng(0)
    truth = np.full((2000, 6, 2), [20.3, 55.6], np.float32)
    dht11 = sensor("dht11")
    one = dht11.collected(truth, rng, (1, 1), dropped=0.0)
    sixty = dht11.collected(truth, rng, (60, 60), dropped=0.1)
    error_one = np.abs(one - truth).mean(axis=(0, 1))
    error_sixty = np.abs(sixty - truth).mean(axis=(0, 1))
    assert (error_sixty < error_one / 2).all()
    assert np.isin(one, np.arange(0, 101)).all()  # one read: whole numbers only


def test_a_broken_table_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "sensors.toml"
    path.write_text("[dht11]\nresolution = [1.0]\nnoise = [0.3, 1.0]\ndescription = 'x'\n")
    with pytest.raises(ConfigError, match="resolution and noise are two numbers"):
        load_sensors(path)
    with pytest.raises(ConfigError, match="unknown sensor 'sht31'"):
        sensor("sht31")

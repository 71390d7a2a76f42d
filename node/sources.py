"""The configured sources, built from settings: hardware drivers are imported only here, and
only for the sources that are selected."""

from __future__ import annotations

from .dht11 import Dht11Sensor, open_dht11
from .microphone import BLOCK_SECONDS, ClipGate, Microphone, open_pyaudio_stream
from .settings import AudioSource, ClimateSource


def open_climate_sensor(settings: ClimateSource) -> Dht11Sensor | None:
    if settings.source == "none":
        return None
    return Dht11Sensor(open_dht11(settings.pin), retries=settings.retries)


def open_microphone(settings: AudioSource) -> Microphone | None:
    if settings.source == "none":
        return None
    stream, release = open_pyaudio_stream(settings.sample_rate, settings.device_index,
                                          round(settings.sample_rate * BLOCK_SECONDS))
    gate = ClipGate(settings.gate_dbfs, settings.every_s)
    return Microphone(stream, settings.sample_rate, settings.clip_seconds, gate,
                      on_close=release)

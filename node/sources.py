"""The configured sources, built from settings: hardware drivers are imported only here, and
only for the sources that are selected."""

from __future__ import annotations

from collections.abc import Callable

from tinyml_core.errors import ConfigError

from .dht11 import Dht11Sensor, open_dht11
from .loan import MicrophoneLoan
from .microphone import BLOCK_SECONDS, Capture, InputStream, Microphone, open_pyaudio_stream
from .settings import AudioSource, ClimateSource


def open_climate_sensor(settings: ClimateSource) -> Dht11Sensor | None:
    if settings.source == "none":
        return None
    return Dht11Sensor(open_dht11(settings.pin), retries=settings.retries)


def open_microphone(settings: AudioSource, loan: MicrophoneLoan | None = None
                    ) -> Microphone | None:
    """The configured microphone; with ``loan``, one that `node enroll` may borrow (waiting
    first if it has it now)."""
    if settings.source == "none":
        return None
    cutting = capture(settings)

    def opened() -> tuple[InputStream, Callable[[], None]]:
        return open_pyaudio_stream(settings.sample_rate, settings.device_index,
                                   round(settings.sample_rate * BLOCK_SECONDS))

    if loan is not None:
        loan.hold()
    try:
        stream, release = opened()
    except BaseException:
        if loan is not None:
            loan.release()
        raise
    return Microphone(stream, settings.sample_rate, cutting, on_close=release, loan=loan,
                      reopen=opened if loan is not None else None)


def capture(settings: AudioSource) -> Capture:
    """How the stream is cut into events; a contradiction is a configuration error."""
    try:
        return Capture(settings.gate_dbfs, settings.pre_roll_s, settings.hangover_s,
                       settings.min_event_s, settings.max_event_s, settings.every_s)
    except ValueError as error:
        raise ConfigError(str(error), key="audio.max_event_s") from None

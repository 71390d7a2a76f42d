"""Temperature and humidity from a DHT11, through Adafruit's ``adafruit_dht`` driver.

The DHT11 fails reads often (checksum errors, missed pulses): :class:`Dht11Sensor` retries
within its period, never faster than the driver allows, counts every failure by reason and
rejects values the sensor cannot produce. The driver is imported only when a DHT11 is
configured; without it the error names the extra to install.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .hardware import SensorError, SensorReadError, import_driver

log = logging.getLogger("node.dht11")

# adafruit_dht measures at most once per 2 s and silently returns the previous values when
# asked sooner, so a retry waits a little longer than that.
MIN_READ_INTERVAL_S = 2.1
# The DHT11 reads 0-50 °C and 20-90 %RH (datasheet); anything far outside is a corrupt frame
# that happened to pass the one-byte checksum.
PLAUSIBLE_TEMPERATURE_C = (-10.0, 60.0)
PLAUSIBLE_HUMIDITY = (1.0, 100.0)


class DhtDevice(Protocol):
    """The part of ``adafruit_dht.DHT11`` used here."""

    @property
    def temperature(self) -> float | None: ...

    @property
    def humidity(self) -> float | None: ...

    def exit(self) -> None: ...


@dataclass
class ReadStats:
    readings: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count
    missed_periods: int = 0  # periods where every retry failed

    def line(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.failures.most_common())
        return (f"{self.readings} readings, {sum(self.failures.values())} failed reads"
                f"{f' ({reasons})' if reasons else ''}, {self.missed_periods} periods missed")


def open_dht11(pin_name: str) -> DhtDevice:
    """The real sensor on a board pin such as ``D4`` (needs adafruit-circuitpython-dht)."""
    adafruit_dht = import_driver("adafruit_dht", "the DHT11 driver")
    board = import_driver("board", "the DHT11 driver")
    pin = getattr(board, pin_name, None)
    if pin is None:
        board_id = getattr(board, "board_id", "this board")
        raise SensorError(f"{board_id} has no pin {pin_name!r} ([climate] pin takes names like "
                          "D4, GPIO4 on a Raspberry Pi)")
    device: DhtDevice = adafruit_dht.DHT11(pin)
    return device


class Dht11Sensor:
    """Reads (°C, %RH) from a DHT11 with retries; see the module doc."""

    def __init__(self, device: DhtDevice, retries: int = 3,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.device = device
        self.retries = retries
        self.stats = ReadStats()
        self._sleep = sleep

    def read(self) -> tuple[float, float]:
        """One reading, trying up to ``retries`` times; SensorReadError when all failed."""
        reason = "no attempt"
        for attempt in range(self.retries):
            if attempt:
                self._sleep(MIN_READ_INTERVAL_S)
            try:
                return self._read_once()
            except SensorReadError as error:
                reason = str(error)
                self.stats.failures[reason] += 1
                log.debug("DHT11 read %d of %d failed: %s", attempt + 1, self.retries, reason)
        self.stats.missed_periods += 1
        raise SensorReadError(f"DHT11: {self.retries} reads failed, last: {reason}")

    def _read_once(self) -> tuple[float, float]:
        try:
            temperature = self.device.temperature
            humidity = self.device.humidity
        except RuntimeError as exc:  # the driver's "try again" errors (checksum, timeout)
            raise SensorReadError(_short_reason(str(exc))) from None
        except OSError as exc:  # GPIO access (permissions, pin busy)
            raise SensorReadError(f"GPIO: {exc.strerror or exc}") from None
        if temperature is None or humidity is None:
            raise SensorReadError("no value")
        low_t, high_t = PLAUSIBLE_TEMPERATURE_C
        low_h, high_h = PLAUSIBLE_HUMIDITY
        if not (low_t <= temperature <= high_t and low_h <= humidity <= high_h):
            raise SensorReadError("implausible value")
        self.stats.readings += 1
        return float(temperature), float(humidity)

    def close(self) -> None:
        try:
            self.device.exit()
        except Exception as exc:  # releasing the pin must not mask the shutdown
            log.debug("DHT11 exit failed: %s", exc)


def _short_reason(message: str) -> str:
    """The driver's messages, minus their "Try again." tails, as counter keys."""
    text = message.strip().rstrip(".")
    for tail in (". Try again", " Try again"):
        text = text.removesuffix(tail)
    return text.lower() or "unknown error"

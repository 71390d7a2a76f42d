"""The node's configuration schema (config/node.toml documents every key)."""

from __future__ import annotations

from dataclasses import dataclass

from tinyml_core.config import BrokerConfig, setting
from tinyml_core.messages import CONFIRM_WINDOW

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 96_000  # what a node captures at


@dataclass(frozen=True)
class NodeIdentity:
    id: str = setting("node-1", "node id: one topic level, also the MQTT client id")
    spool_path: str = setting("var/node-spool.sqlite3",
                              "on-disk spool of messages the broker has not acknowledged")
    spool_max_mb: float = setting(64.0, "spool size cap; past it the oldest audio goes first",
                                  min=1, max=100_000)
    flush_rate_per_s: float = setting(200.0, "backlog messages sent per second after a reconnect",
                                      min=1, max=100_000)
    stats_interval_s: float = setting(600.0, "seconds between statistics log lines",
                                      min=1.0, max=86_400)
    diagnostics_interval_s: float = setting(60.0, "seconds between the retained diagnostics "
                                            "on diagnostics/<id> (spool backlog, failed reads: "
                                            "Home Assistant's diagnostic entities); 0: none",
                                            min=0.0, max=86_400)
    confirm: bool = setting(True, "keep messages the broker acknowledged until a collector "
                            "confirms them, and send them again when they stay unconfirmed (a "
                            "broker crash or full queue can lose what it acknowledged); off: "
                            "forget them at once")
    confirm_window: int = setting(CONFIRM_WINDOW, "messages sent and not yet confirmed at most: "
                                  "no queue between node and collector holds more of this "
                                  "node's (a stock Mosquitto queues 1000 per client); above "
                                  f"{CONFIRM_WINDOW}, a reading sent again may come too late "
                                  "for its forecast windows", min=1, max=100_000)
    resend_after_s: float = setting(10.0, "a message still unconfirmed this long after the "
                                    "broker acknowledged it is sent again", min=0.5,
                                    max=86_400)
    max_unconfirmed: int = setting(1000, "messages kept waiting for a confirmation at most; "
                                   "past it the oldest go (counted)", min=1, max=10_000_000)


@dataclass(frozen=True)
class ClimateSource:
    source: str = setting("dht11", "where readings come from", choices=("dht11", "none"))
    pin: str = setting("D4", "board pin of the DHT11 data line (adafruit-blinka name)")
    period_s: float = setting(10.0, "seconds between readings (the driver allows one per 2 s)",
                              min=2.5, max=86_400)
    retries: int = setting(3, "read attempts per period before counting a failure", min=1, max=20)


@dataclass(frozen=True)
class AudioSource:
    source: str = setting("none", "where clips come from", choices=("microphone", "none"))
    device_index: int = setting(-1, "PyAudio input device index; -1: the default device",
                                min=-1, max=1024)
    sample_rate: int = setting(16_000, "capture rate in Hz (use the device's native rate)",
                               min=MIN_SAMPLE_RATE, max=MAX_SAMPLE_RATE)
    gate_dbfs: float = setting(-50.0, "a sound event starts when the level rises above this "
                               "(dBFS, per 0.1 s); raise it in a loud room", min=-120.0,
                               max=0.0)
    pre_roll_s: float = setting(0.3, "audio kept from before the level rose (a word's soft "
                                "start)", min=0.0, max=2.0)
    hangover_s: float = setting(0.3, "an event ends when the level stayed below the gate this "
                                "long", min=0.0, max=5.0)
    min_event_s: float = setting(1.0, "shortest event published (one model window)",
                                 min=0.1, max=5.0)
    max_event_s: float = setting(3.0, "longest event; a longer sound continues in the next, "
                                 "overlapping by min_event_s (at least 2 x min_event_s)",
                                 min=0.2, max=10.0)
    every_s: float = setting(0.0, "also publish a quiet clip every N seconds; 0: only events",
                             min=0.0, max=86_400)


@dataclass(frozen=True)
class NodeSettings:
    broker: BrokerConfig = setting(BrokerConfig(), "MQTT broker")
    node: NodeIdentity = setting(NodeIdentity(), "identity and spool")
    climate: ClimateSource = setting(ClimateSource(), "temperature/humidity sensor")
    audio: AudioSource = setting(AudioSource(), "microphone")

"""The collector's configuration schema (config/collector.toml documents every key)."""

from __future__ import annotations

from dataclasses import dataclass

from tinyml_core.config import BrokerConfig, setting

FORECAST_MODELS = ("forecast_a", "forecast_b")
KEYWORD_MODELS = ("kws_a", "kws_b", "kws_c")


@dataclass(frozen=True)
class CollectorOptions:
    id: str = setting("collector-1", "MQTT client id; keep it fixed so the session persists")
    models_dir: str = setting("models", "folder holding manifest.json and the .tflite.zlib files")
    forecast_models: tuple[str, ...] = setting(FORECAST_MODELS, "forecasters to run per window",
                                               choices=FORECAST_MODELS)
    keyword_model: str = setting("kws_b", "keyword spotter for audio clips",
                                 choices=KEYWORD_MODELS)
    confidence_floor: float = setting(0.0, "below this probability the label is 'unknown'",
                                      min=0.0, max=1.0)
    share_group: str = setting("", "MQTT shared-subscription group; empty: no sharing")
    queue_size: int = setting(10_000, "inbound messages held before new ones are dropped",
                              min=10, max=10_000_000)
    ha_discovery: bool = setting(False, "publish Home Assistant MQTT discovery config")
    stats_interval_s: float = setting(60.0, "seconds between statistics log lines",
                                      min=1.0, max=86_400)


@dataclass(frozen=True)
class CollectorSettings:
    broker: BrokerConfig = setting(BrokerConfig(), "MQTT broker")
    collector: CollectorOptions = setting(CollectorOptions(), "inference worker")

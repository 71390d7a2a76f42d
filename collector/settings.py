"""The collector's configuration schema (config/collector.toml documents every key)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tinyml_core.config import BrokerConfig, setting
from tinyml_core.errors import ConfigError
from tinyml_core.keywords import ScanSettings
from tinyml_core.statefile import state_path

FORECAST_MODELS = ("forecast_a", "forecast_b")
KEYWORD_MODELS = ("kws_a", "kws_b", "kws_c", "kws_e")


@dataclass(frozen=True)
class CollectorOptions:
    id: str = setting("collector-1", "MQTT client id; keep it fixed so the session persists")
    models_dir: str = setting("models", "folder holding manifest.json and the .tflite.zlib files")
    forecast_models: tuple[str, ...] = setting(FORECAST_MODELS, "forecasters to run per window",
                                               choices=FORECAST_MODELS)
    node_models: tuple[str, ...] = setting((), "NODE=MODEL: a node's own forecaster (made by "
                                           "`training.build forecast_a --from-recording`) "
                                           "in place of the one it was tuned from")
    keyword_model: str = setting("kws_e", "keyword spotter for audio clips",
                                 choices=KEYWORD_MODELS)
    node_keyword_models: tuple[str, ...] = setting(
        (), "NODE=MODEL: a node answered by another keyword model than keyword_model (e.g. "
        "\"pi-kitchen=kws_b\"); such a node's enrollments, fitted to keyword_model, are not used")
    keyword_threshold: float = setting(0.0, "smoothed probability a word needs to be reported; "
                                       "below it the event's result is 'unknown'. 0: the "
                                       "model's own, chosen on streams of speakers it never "
                                       "heard (manifest default_threshold; benchmarks/"
                                       "kws_strangers.py)", min=0.0, max=1.0)
    scan_hop_s: float = setting(0.1, "seconds between the one-second windows scanned over a "
                                "longer sound event", min=0.02, max=1.0)
    keyword_smoothing: int = setting(0, "consecutive windows averaged before the threshold; "
                                     "0: the model's own, chosen with its threshold (manifest "
                                     "default_smoothing; 3 without one)", min=0, max=20)
    share_group: str = setting("", "MQTT shared-subscription group for audio clips; empty: "
                               "no sharing")
    partition: str = setting("1/1", "K/N: forecast only the nodes in part K of N (readings are "
                             "split by node, since a window needs all of a node's readings)")
    state_path: str = setting("var/{id}-windows.json", "where the windows are saved (on a clean "
                              "stop and every state_save_s) and loaded at start ({id}: the "
                              "collector id); beside it, <path>.taken journals which messages "
                              "of each node were taken, as they are; empty: neither is saved")
    enrollment_path: str = setting("var/{id}-enrolled.json", "the enrolled nodes' people and "
                                   "keyword layers (`python -m collector enroll`; {id}: the "
                                   "collector id), read at start and again when it changes; "
                                   "empty: every node answers with the shipped model")
    state_save_s: float = setting(60.0, "seconds between saves of the windows while readings "
                                  "arrive, so a crash or power cut loses at most this much of "
                                  "them; 0: saved on a clean stop only", min=0.0, max=86_400)
    rate_limit_per_s: float = setting(250.0, "messages per second one node may send on average "
                                      "(keep it above the nodes' flush_rate_per_s); 0: no limit",
                                      min=0.0, max=1_000_000)
    rate_limit_burst: int = setting(2000, "messages one node may send at once before its rate "
                                    "limit applies", min=1, max=10_000_000)
    rate_limit_report_s: float = setting(10.0, "seconds between error records for a node over "
                                         "its rate limit", min=0.1, max=86_400)
    ha_discovery: bool = setting(False, "publish Home Assistant MQTT discovery config")
    stats_interval_s: float = setting(60.0, "seconds between statistics log lines",
                                      min=1.0, max=86_400)


def enrollment_path(options: CollectorOptions) -> Path | None:
    return state_path(options.enrollment_path, options.id)


def journal_path(options: CollectorOptions) -> Path | None:
    """Where the collector journals what it took of each node: beside its state file."""
    path = state_path(options.state_path, options.id)
    return None if path is None else path.with_name(path.name + ".taken")


def scan_settings(options: CollectorOptions) -> ScanSettings:
    """How the collector scans sound events (a keyword_threshold or keyword_smoothing of 0:
    the model's own)."""
    return ScanSettings(hop_s=options.scan_hop_s, smoothing=options.keyword_smoothing or None,
                        threshold=options.keyword_threshold or None)


@dataclass(frozen=True)
class CollectorSettings:
    broker: BrokerConfig = setting(BrokerConfig(), "MQTT broker")
    collector: CollectorOptions = setting(CollectorOptions(), "inference worker")


def parse_node_models(entries: tuple[str, ...], key: str = "collector.node_models",
                      example: str = "pi-kitchen=forecast_a.pi-kitchen",
                      choices: tuple[str, ...] = ()) -> dict[str, str]:
    """``("pi-kitchen=forecast_a.pi-kitchen", ...)`` → {node: model} (a model among
    ``choices`` when given)."""
    mapping = {}
    for entry in entries:
        node, separator, model = entry.partition("=")
        if not separator or not node.strip() or not model.strip():
            raise ConfigError(f"{entry!r} is not NODE=MODEL (e.g. {example})", key=key)
        if choices and model.strip() not in choices:
            raise ConfigError(f"{model.strip()!r} is not one of {', '.join(choices)}", key=key)
        mapping[node.strip()] = model.strip()
    return mapping


def parse_node_keyword_models(entries: tuple[str, ...]) -> dict[str, str]:
    return parse_node_models(entries, "collector.node_keyword_models", "pi-kitchen=kws_e",
                             KEYWORD_MODELS)


def parse_partition(text: str) -> tuple[int, int]:
    """``"K/N"`` → (K, N) with 1 <= K <= N."""
    index, _, count = text.partition("/")
    if index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count) <= 1024:
        return int(index), int(count)
    raise ConfigError(f"{text!r} is not K/N with 1 <= K <= N <= 1024 (e.g. 1/2)",
                      key="collector.partition")

"""What the node, the collector and training share: the wire protocol and its plumbing.

- :mod:`tinyml_core.topics`: every topic name, built and parsed in one place
- :mod:`tinyml_core.messages`: typed messages and their SenML/JSON codec
- :mod:`tinyml_core.config`: typed TOML configuration with env and CLI overrides
- :mod:`tinyml_core.mqtt`: the paho-mqtt 2.x adapter (retry, availability, bounded queue)
- :mod:`tinyml_core.broker`: private Mosquitto / embedded broker for tests and the demo
- :mod:`tinyml_core.errors`: the error family

This package never imports TensorFlow; importing it costs numpy and (for mqtt) paho only.
"""

from .errors import (
    ConfigError,
    ModelLoadError,
    MqttConnectError,
    MqttError,
    PayloadError,
    TinyMLError,
)
from .messages import (
    AudioClip,
    Availability,
    ClimateReading,
    ErrorRecord,
    Forecast,
    ForecastStep,
    KeywordResult,
    decode_message,
    decode_sensor_message,
)

__all__ = [
    "AudioClip",
    "Availability",
    "ClimateReading",
    "ConfigError",
    "ErrorRecord",
    "Forecast",
    "ForecastStep",
    "KeywordResult",
    "ModelLoadError",
    "MqttConnectError",
    "MqttError",
    "PayloadError",
    "TinyMLError",
    "decode_message",
    "decode_sensor_message",
]

"""The error family of the shared package.

Every failure that crosses a module boundary is one of these, so callers catch
``TinyMLError`` (or a narrower class) and never a third-party exception:
paho's, tomllib's and json's errors are converted where they first appear,
with ``raise ... from exc`` so the cause is kept.
"""

from __future__ import annotations


class TinyMLError(Exception):
    """Base class of every error raised on purpose by this project."""


class PayloadError(TinyMLError):
    """A message (topic or payload) that does not follow docs/protocol.md.

    ``reason`` is a short human-readable sentence suitable for an
    ``errors/<node_id>`` record; ``field`` names the offending part when known.
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class ConfigError(TinyMLError):
    """A configuration file, environment variable or flag that cannot be used."""

    def __init__(self, reason: str, *, source: str | None = None, key: str | None = None) -> None:
        self.reason = reason
        self.source = source
        self.key = key
        where = ", ".join(part for part in (source, f"key '{key}'" if key else None) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class MqttError(TinyMLError):
    """The broker could not be used (connection, subscription or publish failed)."""


class MqttConnectError(MqttError):
    """No connection to the broker could be made within the allowed time."""


class SubscriptionRefused(MqttError):
    """The broker answered a SUBSCRIBE with a failure code (its ACL, usually)."""


class ModelLoadError(TinyMLError):
    """A model or its manifest entry cannot be used (missing, corrupt, wrong contract)."""

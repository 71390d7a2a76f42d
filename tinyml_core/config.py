"""Typed configuration: TOML files, then environment variables, then command-line flags.

A configuration is a tree of frozen dataclasses. Each field is declared with
:func:`setting`, which gives it a default, a one-line description and its bounds, so
the schema documents itself (``python -m node config`` prints it). :func:`load_settings`
reads the TOML file with the standard library's ``tomllib``, applies the overrides, and
builds the tree; an unknown key, a wrong type or an out-of-range value is a
:class:`~tinyml_core.errors.ConfigError` naming where it came from (file, variable or flag)
and the dotted key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

# Environment variables that override broker settings in every process (12-factor style:
# a container or a systemd unit can keep secrets out of the TOML file).
BROKER_ENVIRONMENT: dict[str, str] = {
    "TINYML_BROKER_HOST": "broker.host",
    "TINYML_BROKER_PORT": "broker.port",
    "TINYML_BROKER_USERNAME": "broker.username",
    "TINYML_BROKER_PASSWORD": "broker.password",
    "TINYML_BROKER_CA_FILE": "broker.tls.ca_file",
    "TINYML_BROKER_CERT_FILE": "broker.tls.cert_file",
    "TINYML_BROKER_KEY_FILE": "broker.tls.key_file",
}


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a configuration field with its default, description and bounds."""
    metadata = {"help": help, "min": min, "max": max, "choices": choices, "secret": secret}
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str = setting("", "CA certificate (PEM) that signed the broker's; empty: no TLS")
    cert_file: str = setting("", "client certificate (PEM), when the broker asks for one")
    key_file: str = setting("", "private key of the client certificate (PEM)")

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)


@dataclass(frozen=True)
class BrokerConfig:
    host: str = setting("localhost", "broker host name or address")
    port: int = setting(1883, "broker TCP port (8883 is usual with TLS)", min=1, max=65535)
    username: str = setting("", "user name; empty: connect anonymously")
    password: str = setting("", "password (prefer TINYML_BROKER_PASSWORD)", secret=True)
    protocol: str = setting("3.1.1", "MQTT protocol version", choices=("3.1.1", "5"))
    keepalive_s: int = setting(30, "seconds between keep-alive pings", min=5, max=3600)
    connect_timeout_s: float = setting(
        30.0, "how long to keep trying the first connection before giving up", min=0.1, max=86400
    )
    reconnect_min_s: float = setting(0.5, "first retry delay after a lost connection", min=0.1,
                                     max=60)
    reconnect_max_s: float = setting(30.0, "longest retry delay (doubles up to this)", min=0.1,
                                     max=3600)
    topic_prefix: str = setting("", "prefix put before every topic, e.g. 'home/'; empty: none")
    tls: TlsConfig = setting(TlsConfig(), "TLS settings")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


# --- loading ------------------------------------------------------------------------------------
def _describe(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def _convert(value: Any, annotation: Any, origin: str, key: str, from_text: bool) -> Any:
    """Check (and for strings from the environment, parse) one value against its type."""
    from_text = from_text and isinstance(value, str)
    if annotation is bool:
        if from_text:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {_describe(value)}", source=origin, key=key)
    if annotation is int:
        if from_text:
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"expected an integer, got {_describe(value)}", source=origin, key=key)
    if annotation is float:
        if from_text:
            try:
                return float(value.strip())
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"expected a number, got {_describe(value)}", source=origin, key=key)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected a string, got {_describe(value)}", source=origin, key=key)
    if typing.get_origin(annotation) is tuple:
        if from_text:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"expected a list of strings, got {_describe(value)}", source=origin,
                          key=key)
    raise TypeError(f"unsupported setting type {annotation!r} for {key}")  # a schema bug


def _check_bounds(value: Any, metadata: Mapping[str, Any], origin: str, key: str) -> None:
    low, high, choices = metadata.get("min"), metadata.get("max"), metadata.get("choices")
    if low is not None and value < low:
        raise ConfigError(f"{value!r} is below the minimum {low!r}", source=origin, key=key)
    if high is not None and value > high:
        raise ConfigError(f"{value!r} is above the maximum {high!r}", source=origin, key=key)
    if choices is not None:
        bad = [v for v in (value if isinstance(value, tuple) else (value,)) if v not in choices]
        if bad:
            raise ConfigError(
                f"{bad[0]!r} is not one of {', '.join(map(repr, choices))}", source=origin, key=key
            )


@dataclass
class _Origins:
    """Where each dotted key's value came from, for error messages."""

    default: str
    by_key: dict[str, str] = dataclasses.field(default_factory=dict)
    textual: set[str] = dataclasses.field(default_factory=set)  # keys set from environment text

    def of(self, key: str) -> str:
        return self.by_key.get(key, self.default)


def _build(schema: type[T], table: Mapping[str, Any], origins: _Origins, prefix: str) -> T:
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    for name in table:
        if name not in fields:
            key = prefix + name
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key (known here: {known})",
                              source=origins.of(key), key=key)
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in table:
            continue
        key = prefix + name
        origin = origins.of(key)
        annotation = hints[name]
        if isinstance(annotation, types.UnionType):
            raise TypeError(f"optional settings are not supported: {key}")  # a schema bug
        if dataclasses.is_dataclass(annotation):
            if not isinstance(table[name], Mapping):
                raise ConfigError(f"expected a table, got {_describe(table[name])}",
                                  source=origin, key=key)
            values[name] = _build(annotation, table[name], origins, key + ".")  # type: ignore[arg-type]
        else:
            value = _convert(table[name], annotation, origin, key, key in origins.textual)
            _check_bounds(value, spec.metadata, origin, key)
            values[name] = value
    return schema(**values)


def _set_dotted(table: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for depth, part in enumerate(parents):
        child: Any = table.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError("expected a table", key=".".join(parents[: depth + 1]))
        table = child
    table[leaf] = value


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a ConfigError that names the file."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a TOML file", source=str(path)) from None
    except PermissionError:
        raise ConfigError("cannot be read (permission denied)", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML: {exc}", source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", source=str(path)) from None


def load_settings(
    schema: type[T],
    path: Path | str | None = None,
    *,
    environment: Mapping[str, str] | None = None,
    environment_keys: Mapping[str, str] = BROKER_ENVIRONMENT,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``schema`` from a TOML file, then environment variables, then ``overrides``.

    ``environment_keys`` maps variable names to dotted keys; ``overrides`` maps dotted keys
    (e.g. ``"broker.port"``) to values from command-line flags. Later sources win.
    """
    table: dict[str, Any] = {}
    origins = _Origins("built-in defaults")
    if path is not None:
        path = Path(path)
        table = read_toml(path)
        origins.default = str(path)
    for variable, dotted in environment_keys.items():
        if environment is not None and variable in environment:
            _set_dotted(table, dotted, environment[variable])
            origins.by_key[dotted] = f"environment variable {variable}"
            origins.textual.add(dotted)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(table, dotted, value)
            origins.by_key[dotted] = "command line"
            origins.textual.discard(dotted)
    return _build(schema, table, origins, "")


def describe_settings(settings: object, *, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, value, description) rows for display; secrets are masked."""
    rows: list[tuple[str, str, str]] = []
    for spec in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, spec.name)
        key = prefix + spec.name
        if dataclasses.is_dataclass(value):
            rows.extend(describe_settings(value, prefix=key + "."))
            continue
        shown = "********" if spec.metadata.get("secret") and value else repr(value)
        rows.append((key, shown, spec.metadata.get("help", "")))
    return rows

"""Typed configuration: files, environment, flags, and errors that name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.settings import CollectorSettings
from node.settings import NodeSettings
from tinyml_core.config import BrokerConfig, describe_settings, load_settings
from tinyml_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("schema", "name"), [(NodeSettings, "node.toml"),
                                              (CollectorSettings, "collector.toml")])
def test_shipped_config_files_load(schema: type, name: str) -> None:
    settings = load_settings(schema, REPO_ROOT / "config" / name, environment={})
    assert settings.broker == BrokerConfig()


def test_defaults_without_a_file() -> None:
    settings = load_settings(NodeSettings, None, environment={})
    assert settings.broker.port == 1883 and settings.node.id == "node-1"


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nhost = "mqtt.lan"\nport = 8883\n[broker.tls]\n'
                           'ca_file = "/etc/ca.pem"\n[node]\nid = "pi-kitchen"\n')
    settings = load_settings(NodeSettings, path, environment={})
    assert (settings.broker.host, settings.broker.port) == ("mqtt.lan", 8883)
    assert settings.broker.tls.ca_file == "/etc/ca.pem" and settings.broker.tls.enabled
    assert settings.node.id == "pi-kitchen"


def test_environment_overrides_file_and_flags_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nhost = "file-host"\nport = 1000\nusername = "file"\n')
    environment = {"TINYML_BROKER_HOST": "env-host", "TINYML_BROKER_PORT": "2000",
                   "TINYML_BROKER_PASSWORD": "s3cret", "TINYML_BROKER_CA_FILE": "/ca.pem",
                   "UNRELATED": "x"}
    settings = load_settings(NodeSettings, path, environment=environment,
                             overrides={"broker.port": 3000, "broker.username": None})
    assert settings.broker.host == "env-host"      # environment beats file
    assert settings.broker.port == 3000            # flag beats environment
    assert settings.broker.username == "file"      # a flag left unset changes nothing
    assert settings.broker.password == "s3cret"
    assert settings.broker.tls.ca_file == "/ca.pem"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nhots = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(NodeSettings, path, environment={})
    message = str(caught.value)
    assert str(path) in message and "broker.hots" in message and "host" in message


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'colector'"):
        load_settings(CollectorSettings, write(tmp_path, "[colector]\nid = 'x'\n"), environment={})


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[broker]\nport = "1883"\n', "broker.port", "expected an integer"),
        ("[broker]\nport = 70000\n", "broker.port", "above the maximum"),
        ("[broker]\nport = true\n", "broker.port", "expected an integer"),
        ('[broker]\nprotocol = "4"\n', "broker.protocol", "not one of"),
        ("[broker]\nhost = 5\n", "broker.host", "expected a string"),
        ('broker = "localhost"\n', "broker", "expected a table"),
        ("[climate]\nperiod_s = 0.5\n", "climate.period_s", "below the minimum"),
        ('[audio]\nsource = "usb"\n', "audio.source", "not one of"),
    ],
)
def test_wrong_type_or_value_names_the_key(tmp_path: Path, text: str, key: str,
                                           words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(NodeSettings, path, environment={})
    assert f"key '{key}'" in str(caught.value) and words in str(caught.value)
    assert str(path) in str(caught.value)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment variable TINYML_BROKER_PORT.*integer"):
        load_settings(NodeSettings, None, environment={"TINYML_BROKER_PORT": "eighteen"})


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(NodeSettings, tmp_path / "absent.toml", environment={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(NodeSettings, write(tmp_path, "[broker\n"), environment={})


def test_collector_lists_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, '[collector]\nforecast_models = ["forecast_a", "forecast_z"]\n')
    with pytest.raises(ConfigError, match="'forecast_z' is not one of"):
        load_settings(CollectorSettings, path, environment={})


def test_describe_masks_secrets() -> None:
    settings = load_settings(NodeSettings, None, environment={"TINYML_BROKER_PASSWORD": "pw"})
    rows = {key: value for key, value, _ in describe_settings(settings)}
    assert rows["broker.password"] == "********" and rows["broker.port"] == "1883"

"""The command lines as a user runs them: --help everywhere, config shown, errors readable."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", [("node",), ("node", "config"), ("collector",),
                                     ("collector", "config"), ("demo",), ("dashboard",),
                                     ("dashboard", "config"), ("dashboard", "run")])
def test_help(command: tuple[str, ...]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_node_config_shows_effective_settings_with_overrides() -> None:
    result = run("node", "config", "--config", "config/node.toml", "--broker", "mqtt.lan:8883",
                 "--node-id", "pi-kitchen", env={"TINYML_BROKER_PASSWORD": "hunter2"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^broker\.host +'mqtt\.lan' +# broker host", result.stdout, re.MULTILINE)
    assert "node.id" in result.stdout and "'pi-kitchen'" in result.stdout
    assert "hunter2" not in result.stdout and "********" in result.stdout


def test_config_error_is_one_line_and_exit_status_1(tmp_path: object) -> None:
    result = run("collector", "config", env={"TINYML_BROKER_PORT": "eighteen"})
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: environment variable TINYML_BROKER_PORT, key "
                                     "'broker.port': expected an integer, got a string "
                                     "('eighteen')")


def test_bad_flag_is_a_usage_error() -> None:
    result = run("node", "config", "--broker", "localhost")
    assert result.returncode == 2 and "is not HOST:PORT" in result.stderr


def test_node_and_collector_never_import_tensorflow() -> None:
    code = ("import sys, node.__main__, collector.__main__, tinyml_core.mqtt, "
            "tinyml_core.recordings; print([m for m in sys.modules if m.startswith("
            "('tensorflow', 'tf_keras', 'keras', 'scipy'))])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_a_thread_that_dies_stops_the_process_with_exit_status_1(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from tinyml_core.cli import stop_on_thread_death

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored afterwards
    stopped = threading.Event()
    watch = stop_on_thread_death(stopped.set)
    quiet = threading.Thread(target=lambda: None, name="fine")
    quiet.start()
    quiet.join()
    ending = threading.Thread(target=lambda: (_ for _ in ()).throw(SystemExit), name="exits")
    ending.start()
    ending.join()
    assert not stopped.is_set() and watch.exit_status() == 0

    def forward() -> None:
        raise OSError("disk full")

    dying = threading.Thread(target=forward, name="forwarder")
    dying.start()
    dying.join()
    assert stopped.is_set()
    assert watch.exit_status() == 1
    assert "error: thread 'forwarder' died: OSError: disk full" in capsys.readouterr().err

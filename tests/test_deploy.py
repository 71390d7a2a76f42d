"""The files that set up one Raspberry Pi running everything (deploy/): every unit passes
``systemd-analyze verify`` (with the install prefix pointing at this checkout, whose .venv
exists), runs as the unprivileged user, restarts on failure and starts at boot; the install
script parses, installs every unit, and puts every file the Mosquitto drop-in names where it
names it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
INSTALL = DEPLOY / "install-pi.sh"


def test_there_is_a_unit_for_each_process_of_the_pi() -> None:
    assert [unit.name for unit in UNITS] == ["tinyml-collector.service",
                                             "tinyml-dashboard.service", "tinyml-node.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_a_unit_restarts_runs_unprivileged_and_starts_at_boot(unit: Path) -> None:
    text = unit.read_text()
    assert "\nUser=tinyml\n" in text and "\nRestart=always\n" in text
    assert "\nWantedBy=multi-user.target\n" in text and "\nNoNewPrivileges=true\n" in text
    assert "After=network-online.target mosquitto.service" in text
    command = re.search(r"^ExecStart=(.*)$", text, re.MULTILINE)
    assert command is not None and command.group(1).startswith("/opt/tinyml/.venv/bin/python")
    config = command.group(1).split("--config ")[1]
    role = unit.stem.removeprefix("tinyml-")
    assert config == f"/etc/tinyml/{role}.toml" and (REPO_ROOT / "config" / f"{role}.toml").exists()
    assert "install -m 644 \"$prefix/config/$role.toml\" \"/etc/tinyml/$role.toml\"" in \
        INSTALL.read_text()


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_systemd_analyze_verifies_the_unit(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("TINYML_REQUIRE_SYSTEMD") == "1":
            pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout (scripts/bootstrap makes it)")
    (REPO_ROOT / "var").mkdir(exist_ok=True)
    # As installed, but in this checkout and as this user: verify checks that the command
    # exists and the paths are there.
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    text = unit.read_text().replace("/opt/tinyml", str(REPO_ROOT)).replace(
        "User=tinyml", f"User={user.strip()}").replace("Group=tinyml", "")
    copy = tmp_path / unit.name
    copy.write_text(text)
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_install_script_parses_and_installs_what_the_broker_config_names() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    script = INSTALL.read_text()
    broker = (REPO_ROOT / "config" / "mosquitto" / "tinyml.conf").read_text()
    for setting in ("password_file", "acl_file"):
        path = re.search(rf"^{setting} (\S+)$", broker, re.MULTILINE)
        assert path is not None and path.group(1) in script
    assert "/etc/mosquitto/conf.d/tinyml.conf" in script
    for unit in UNITS:
        assert unit.stem in script
    done = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "One Raspberry Pi runs everything" in done.stdout

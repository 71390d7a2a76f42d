"""The shared state-file mechanism: atomic write, checked read, save only what changed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tinyml_core.statefile import ChangeSaver, read_state_file


def test_a_saver_writes_only_when_the_state_changed_and_always_on_a_clean_stop(
        tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = {"changes": 0, "written": 0}

    def document() -> dict[str, object]:
        state["written"] += 1
        return {"format": "test-state", "version": 1, "value": state["changes"]}

    saver = ChangeSaver(path, "test state", lambda: state["changes"], document)
    saver.save()
    assert not path.exists() and state["written"] == 0  # nothing changed since start
    state["changes"] = 3
    saver.save()
    saver.save()
    assert state["written"] == 1
    assert read_state_file(path, "test-state", 1, "test file")["value"] == 3
    saver.save(final=True)
    assert state["written"] == 2


def test_a_save_that_cannot_be_written_is_logged_and_the_process_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    changes = iter(range(1, 100))
    saver = ChangeSaver(blocked / "state.json", "test state", lambda: next(changes),
                        lambda: {"format": "test-state", "version": 1})
    with caplog.at_level(logging.ERROR, logger="tinyml_core.statefile"):
        saver.save()  # its folder is a file: OSError, logged
    assert "test state not saved to" in caplog.text
    nan = ChangeSaver(tmp_path / "nan.json", "test state", lambda: next(changes),
                      lambda: {"value": float("nan")})
    with caplog.at_level(logging.ERROR, logger="tinyml_core.statefile"):
        nan.save()  # JSON cannot hold it: ValueError, logged
    assert caplog.text.count("not saved to") == 2
    assert list(tmp_path.iterdir()) == [blocked]  # no file, no half-written temporary


@pytest.mark.parametrize("content, reason", [
    (b"{", "not JSON"), (b"[]", "not a test file"),
    (json.dumps({"format": "test-state", "version": 2}).encode(), "version 2"),
])
def test_a_file_of_another_kind_or_version_is_refused_with_the_reason(
        tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason):
        read_state_file(path, "test-state", 1, "test file")

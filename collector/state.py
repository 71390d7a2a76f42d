"""The collector's windows on disk: saved on a clean stop and every ``state_save_s`` while
readings arrive, loaded at start.

Without them every node's forecasts would pause for a whole window (an hour at 10-minute
steps) after each upgrade, reboot, crash or power cut. A window is saved with its step times
and its half-averaged open step, so the first reading after a restart within a step continues
it exactly; a window whose next reading is more than one step later is emptied (StepWindow's
gap rule), never joined to it. After a crash the windows are those of the last save: readings
taken since then are missing from the step they fell in.

The file is JSON, written atomically (a crash while saving leaves the previous file). One that
is unreadable, of another format or version, or saved by another collector id (two workers
sharing a folder) is refused with a warning, and the collector starts with empty windows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tinyml_core.statefile import read_state_file

from .inference import Inference

log = logging.getLogger(__name__)

FORMAT = "tinyml-collector-windows"
VERSION = 1


def state_document(collector_id: str, inference: Inference) -> dict[str, Any]:
    """What the state file holds: every window of ``inference``, with the file's kind."""
    return {"format": FORMAT, "version": VERSION, "collector_id": collector_id,
            "saved_at": time.time(), "windows": inference.export_windows(),
            "journal_through": inference.confirmations.readings_through}


def load_state(path: Path, collector_id: str, inference: Inference) -> int:
    """Restore the windows saved in ``path``, then the readings journalled after that save
    (collector/confirmations.py); returns how many windows (0 with a warning when the file is
    refused, 0 silently when there is none)."""
    try:
        document = _read(path, collector_id)
    except FileNotFoundError:
        _restore_journalled(inference, 0)
        return 0
    except (OSError, ValueError) as error:
        log.warning("state file %s refused, starting with empty windows: %s", path, error)
        _restore_journalled(inference, 0)
        return 0
    restored, refused = inference.restore_windows(document["windows"])
    if refused:
        log.warning("state file %s: %d windows refused (first: %s)", path, len(refused),
                    refused[0])
    age = time.time() - float(document["saved_at"])
    log.info("restored %d windows from %s (saved %.0f s ago)", restored, path, age)
    through = document.get("journal_through")
    _restore_journalled(inference, through if type(through) is int else 0)
    return restored


def _restore_journalled(inference: Inference, after: int) -> None:
    restored = inference.restore_journalled(after)
    inference.confirmations.state_saved(after)
    if restored:
        log.info("put back %d readings journalled since that save", restored)


def _read(path: Path, collector_id: str) -> dict[str, Any]:
    document = read_state_file(path, FORMAT, VERSION, "collector state file")
    if document.get("collector_id") != collector_id:
        raise ValueError(f"saved by collector {document.get('collector_id')!r}, this is "
                         f"{collector_id!r}")
    if not isinstance(document.get("windows"), list) or \
            not isinstance(document.get("saved_at"), int | float):
        raise ValueError("no list of windows")
    return document

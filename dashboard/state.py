"""The dashboard's history on disk: saved on a clean stop and every ``state_save_s`` while
messages arrive, loaded at start, so a restart or reboot does not empty the charts.

A file that is unreadable, of another kind, version or step length is refused with a
warning and the dashboard starts empty; a malformed node in it is skipped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tinyml_core.statefile import read_state_file

from .store import History

log = logging.getLogger(__name__)

FORMAT = "tinyml-dashboard-history"
VERSION = 1


def history_document(history: History) -> dict[str, Any]:
    """What the history file holds: every node's history, with the file's kind."""
    return {"format": FORMAT, "version": VERSION, "saved_at": time.time(), **history.export()}


def load_history(path: Path, history: History) -> int:
    """Restore the nodes saved in ``path``; how many (0 with a warning when the file is
    refused, 0 silently when there is none)."""
    try:
        document = read_state_file(path, FORMAT, VERSION, "dashboard history file")
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as error:
        log.warning("history file %s refused, starting empty: %s", path, error)
        return 0
    restored, refused = history.restore(document)
    if refused:
        log.warning("history file %s: %d nodes refused (first: %s)", path, len(refused),
                    refused[0])
    log.info("restored the history of %d nodes from %s", restored, path)
    return restored

"""Small JSON state files that a process keeps across restarts (the collector's windows, the
dashboard's history): written atomically, so a crash while writing leaves the previous file,
and read back with a size limit and a check of their kind and version, so a file of another
kind, another version or no JSON at all is refused with the reason instead of half-loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_STATE_BYTES = 256 * 1024 * 1024


def state_path(template: str, client_id: str) -> Path | None:
    """The state file of ``client_id`` (``{id}`` in ``template`` is replaced, so workers
    sharing a folder keep apart); None: no state file."""
    return Path(template.replace("{id}", client_id)) if template else None


def write_state_file(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` with ``document`` as JSON (written beside it, synced, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as out:
        json.dump(document, out, separators=(",", ":"), allow_nan=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def read_state_file(path: Path, kind: str, version: int, what: str,
                    max_bytes: int = MAX_STATE_BYTES) -> dict[str, Any]:
    """The document in ``path`` if its "format" is ``kind`` (``what`` names it in messages)
    and its "version" ``version``; FileNotFoundError when there is none, ValueError (saying
    why) when it is refused."""
    if path.stat().st_size > max_bytes:
        raise ValueError(f"larger than {max_bytes // 2**20} MB")
    try:
        document = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise ValueError(f"not a {what} (no \"format\": \"{kind}\")")
    if document.get("version") != version:
        raise ValueError(f"version {document.get('version')!r}, this program reads {version}")
    return document

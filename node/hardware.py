"""What the node's hardware sources share: their errors and the lazy import of drivers."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from tinyml_core.errors import TinyMLError

INSTALL_HINT = "install the node extra on the Pi: pip install '.[node]'"


class SensorError(TinyMLError):
    """A sensor that cannot be used at all (driver missing, unknown pin, no device)."""


class SensorReadError(TinyMLError):
    """One failed read; the next may succeed."""


def import_driver(module: str, what: str, needs: str = "") -> ModuleType:
    """Import a hardware library only when its source is selected; missing → one clear line."""
    os.environ.setdefault("BLINKA_SKIP_DEPENDENCY_CHECK", "1")  # never pip-install on the Pi
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = f" (needs {needs})" if needs else ""
        raise SensorError(f"{what} is missing ({exc.name}): {INSTALL_HINT}{extra}") from None
    except (NotImplementedError, RuntimeError) as exc:  # Blinka on a board it does not know
        raise SensorError(f"{what} cannot run on this machine: {exc}") from None

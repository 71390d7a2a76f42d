"""Progress bars for long work: epochs of training, clips of feature extraction."""

from __future__ import annotations

import logging
import time
from typing import Any

from tqdm.auto import tqdm

from .tf import keras

log = logging.getLogger(__name__)


class EpochProgress(keras.callbacks.Callback):  # type: ignore[misc]
    """One bar per training run, advancing per epoch, showing the losses. Without the bar
    (``--no-progress``, a log file), a log line every tenth of the run says how far it is."""

    def __init__(self, name: str, epochs: int, enabled: bool = True) -> None:
        super().__init__()
        self.name, self.epochs, self.enabled = name, epochs, enabled
        self._bar = tqdm(total=epochs, desc=f"train {name}", unit="epoch", disable=not enabled,
                         leave=False)
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        shown = {key: f"{value:.4g}" for key, value in logs.items()
                 if "loss" in key or "acc" in key}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)
        done = epoch + 1
        if not self.enabled and done % max(1, self.epochs // 10) == 0:
            elapsed = time.monotonic() - self._started
            left = elapsed / done * (self.epochs - done)
            log.info("train %s: epoch %d/%d, %s; %.0f s so far, about %.0f s left", self.name,
                     done, self.epochs, ", ".join(f"{k} {v}" for k, v in shown.items()),
                     elapsed, left)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._bar.close()

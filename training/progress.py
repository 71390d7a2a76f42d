"""Progress bars for long work: epochs of training, clips of feature extraction."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from .tf import keras


class EpochProgress(keras.callbacks.Callback):  # type: ignore[misc]
    """One bar per training run, advancing per epoch, showing the losses."""

    def __init__(self, name: str, epochs: int, enabled: bool = True) -> None:
        super().__init__()
        self._bar = tqdm(total=epochs, desc=f"train {name}", unit="epoch", disable=not enabled,
                         leave=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        shown = {key: f"{value:.4g}" for key, value in logs.items()
                 if "loss" in key or "acc" in key}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._bar.close()

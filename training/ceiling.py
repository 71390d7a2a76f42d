"""How much skill over persistence a forecaster's inputs allow at all: an estimate of the
ceiling, from models far larger than any that ships (benchmarks/forecast_ceiling.py prints it).

Both models see what a forecaster sees, as features: the changes from the last reading, the
last reading itself, and sin/cos of the time of day and of the day of the year. ``linear`` is
least squares on them; ``large_mlp`` is 2 x 256 units (about 70,000 weights), L1 loss, early
stopping on validation. Both predict the change from the last reading.
"""

from __future__ import annotations

import numpy as np

from tinyml_core.models import time_of_day

YEAR_S = 365.25 * 86_400.0


def features(windows: np.ndarray, end_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F], last reading [N, 1, 2]): changes from the last reading, the last
    reading itself, and the time of day and of the year as sin/cos."""
    last = windows[:, -1:, :]
    angle = (np.asarray(end_times, np.float64) % YEAR_S) / YEAR_S * 2 * np.pi
    season = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    flat = [(windows - last)[:, :-1].reshape(len(windows), -1), last[:, 0],
            time_of_day(end_times)[:, 0], season]
    return np.concatenate(flat, axis=1).astype(np.float32), last


def linear(train: tuple[np.ndarray, ...], test: tuple[np.ndarray, ...], steps: int
           ) -> np.ndarray:
    (x, t, y), (x_test, t_test) = train, test
    f, last = features(x, t)
    f_test, last_test = features(x_test, t_test)
    weights, *_ = np.linalg.lstsq(np.c_[f, np.ones(len(f))],
                                  (y - last).reshape(len(y), -1), rcond=None)
    change = np.c_[f_test, np.ones(len(f_test))] @ weights
    return last_test + change.reshape(len(x_test), steps, 2)


def large_mlp(train: tuple[np.ndarray, ...], validation: tuple[np.ndarray, ...],
              test: tuple[np.ndarray, ...], steps: int, seed: int) -> np.ndarray:
    from .tf import keras, seed_everything

    seed_everything(seed)
    (x, t, y), (x_val, t_val, y_val), (x_test, t_test) = train, validation, test
    f, last = features(x, t)
    f_val, last_val = features(x_val, t_val)
    f_test, last_test = features(x_test, t_test)
    mean, std = f.mean(axis=0), f.std(axis=0) + 1e-6
    inputs = keras.Input((f.shape[1],))
    hidden = keras.layers.Dense(256, activation="relu")(inputs)
    hidden = keras.layers.Dense(256, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(steps * 2)(hidden))
    model.compile(keras.optimizers.Adam(1e-3), loss="mae")
    model.fit((f - mean) / std, (y - last).reshape(len(y), -1), batch_size=128, epochs=100,
              validation_data=((f_val - mean) / std, (y_val - last_val).reshape(len(y_val), -1)),
              verbose=0, callbacks=[
                  keras.callbacks.EarlyStopping(patience=10, restore_best_weights=True),
                  keras.callbacks.ReduceLROnPlateau(patience=4)])
    change = model.predict((f_test - mean) / std, verbose=0, batch_size=4096)
    return last_test + change.reshape(len(x_test), steps, 2)

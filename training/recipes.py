"""Recipes as data: config/recipes.toml parsed into checked, typed objects.

A recipe says how one model is built (architecture, width, training, pruning schedule,
quantization, constraints); the code that follows it lives in training.forecast,
training.kws and training.compress. The raw section is copied into the manifest.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tinyml_core.embedding import KIND as EMBEDDING_KIND
from tinyml_core.embedding import EmbeddingParams
from tinyml_core.errors import ConfigError
from tinyml_core.frontend import MfccParams

RECIPES_PATH = Path(__file__).resolve().parent.parent / "config" / "recipes.toml"
TASKS = ("forecast", "keyword")
QUANTIZATION_MODES = ("none", "int8_weights", "float16", "int8_full")
SECTIONS = {"task", "baseline", "seed", "steps", "constraints", "model", "train", "pruning",
            "quantization", "front_end", "augment", "open_set"}
# The settings training reads from the augment and open_set tables (training.forecast,
# training.kws, training.rooms): a misspelt one would otherwise train the recipe unchanged.
AUGMENT_KEYS = {
    "forecast": {"sensor", "fraction", "dropped", "readings_per_step"},
    "keyword": {"speed", "time_shift_s", "gain_db", "background_probability",
                "background_snr_db", "noise_max", "noise_probability", "time_masks",
                "time_mask_max", "coefficient_masks", "coefficient_mask_max", "room_probability",
                "rooms", "microphone_probability", "peak_dbfs"},
}
OPEN_SET_KEYS = {"silence_per_epoch", "silence_validation", "phrase_windows_per_epoch",
                 "running_speech_per_epoch"}


@dataclass(frozen=True)
class Pruning:
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.0
    begin_epoch: int = 0
    end_epoch: int = 0

    @property
    def enabled(self) -> bool:
        return self.final_sparsity > 0

    def describe(self) -> str:
        if not self.enabled:
            return "none"
        return (f"{self.initial_sparsity:.2f} → {self.final_sparsity:.2f} "
                f"(epochs {self.begin_epoch}–{self.end_epoch})")


@dataclass(frozen=True)
class Quantization:
    mode: str = "none"
    calibration_samples: int = 500


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str
    seed: int
    model: dict[str, Any]
    train: dict[str, Any]
    pruning: Pruning
    quantization: Quantization
    constraints: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None
    steps: int = 0
    front_end: MfccParams | EmbeddingParams | None = None
    augment: dict[str, Any] = field(default_factory=dict)
    open_set: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.model.get("width", 1.0))

    def with_settings(self, augment: dict[str, Any] | None = None,
                      open_set: dict[str, Any] | None = None) -> Recipe:
        """This recipe with some augment and open_set settings changed (to try them on the
        speaker folds before they go into config/recipes.toml), checked as the file's are."""
        if open_set and not self.open_set:
            raise ConfigError("has no open_set table to change", key=f"{self.name}.open_set")
        changed = replace(self, augment=self.augment | (augment or {}),
                          open_set=self.open_set | (open_set or {}))
        _check_settings(changed)
        return changed


def load_recipes(path: Path = RECIPES_PATH) -> dict[str, Recipe]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror})", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", source=str(path)) from None
    recipes = {name: _recipe(name, section, path) for name, section in document.items()}
    for recipe in recipes.values():
        if recipe.baseline and recipe.baseline not in recipes:
            raise ConfigError(f"baseline {recipe.baseline!r} is not a recipe", source=str(path),
                              key=f"{recipe.name}.baseline")
    return recipes


def recipe(name: str, path: Path = RECIPES_PATH) -> Recipe:
    recipes = load_recipes(path)
    if name not in recipes:
        raise ConfigError(f"no recipe {name!r} (have {', '.join(recipes)})", source=str(path))
    return recipes[name]


def _check_settings(recipe: Recipe, path: Path | None = None) -> None:
    for table, given, known in (("augment", recipe.augment, AUGMENT_KEYS[recipe.task]),
                                ("open_set", recipe.open_set, OPEN_SET_KEYS)):
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(f"unknown settings {unknown} (known: {', '.join(sorted(known))})",
                              source=str(path) if path else None,
                              key=f"{recipe.name}.{table}.{unknown[0]}")


def _recipe(name: str, section: Any, path: Path) -> Recipe:
    def fail(reason: str, key: str) -> ConfigError:
        return ConfigError(reason, source=str(path), key=f"{name}.{key}")

    if not isinstance(section, dict):
        raise fail("must be a table", "")
    unknown = set(section) - SECTIONS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}", sorted(unknown)[0])
    task = section.get("task")
    if task not in TASKS:
        raise fail(f"must be one of {TASKS}", "task")
    try:
        pruning = Pruning(**section.get("pruning", {}))
        quantization = Quantization(**section.get("quantization", {}))
        front_end = _front_end(section["front_end"]) if "front_end" in section else None
    except (TypeError, ValueError) as exc:
        raise fail(str(exc), "pruning/quantization/front_end") from None
    if quantization.mode not in QUANTIZATION_MODES:
        raise fail(f"must be one of {QUANTIZATION_MODES}", "quantization.mode")
    if not 0 <= pruning.initial_sparsity <= pruning.final_sparsity < 1:
        raise fail("need 0 <= initial <= final < 1", "pruning")
    if task == "forecast" and int(section.get("steps", 0)) < 1:
        raise fail("a forecaster needs steps >= 1", "steps")
    if task == "keyword" and front_end is None:
        raise fail("a keyword model needs a front_end table", "front_end")
    checked = Recipe(
        name=name, task=task, seed=int(section.get("seed", 0)),
        model=dict(section.get("model", {})), train=dict(section.get("train", {})),
        pruning=pruning, quantization=quantization,
        constraints={k: float(v) for k, v in section.get("constraints", {}).items()},
        baseline=section.get("baseline"), steps=int(section.get("steps", 0)),
        front_end=front_end, augment=dict(section.get("augment", {})),
        open_set=dict(section.get("open_set", {})), raw=section,
    )
    _check_settings(checked, path)
    return checked


def _front_end(table: dict[str, Any]) -> MfccParams | EmbeddingParams:
    """MFCC parameters, or ``kind = "speech_embedding"`` with ``window_embeddings``: the
    pretrained embedding's pinned files (training/pretrained.py)."""
    if table.get("kind", "mfcc") == EMBEDDING_KIND:
        from .pretrained import params

        if set(table) - {"kind", "window_embeddings"}:
            raise ValueError("a speech_embedding front end takes only window_embeddings")
        return params(int(table.get("window_embeddings", 10)))
    return MfccParams(**{k: v for k, v in table.items() if k != "kind"})

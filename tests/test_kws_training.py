"""Keyword-spotting training pieces: split, augmentation, model shape (training extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.recipes import load_recipes

pytestmark = pytest.mark.training
pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_model_optimization")

from training import kws, speech  # noqa: E402


def test_the_fixed_split_is_6400_800_800_disjoint_and_uses_the_label_order() -> None:
    names = {part: (speech.SPLIT_DIR / file).read_text().split()
             for part, file in speech.SPLIT_FILES.items()}
    assert [len(names[part]) for part in ("train", "validation", "test")] == [6400, 800, 800]
    assert not set(names["train"]) & set(names["test"])
    assert not set(names["validation"]) & set(names["test"])
    assert speech.labels() == ["stop", "up", "yes", "right", "left", "no", "down", "go"]
    words = {name.split("/")[-2] for name in names["test"]}
    assert words == set(speech.labels())


def test_time_shift_moves_audio_and_fills_with_zeros() -> None:
    audio = np.zeros((50, 8000), np.float32)
    audio[:, 4000] = 1.0
    rng = np.random.default_rng(0)
    shifted = kws.augment(audio, {"time_shift_s": 0.1}, rng, 8000)
    positions = shifted.argmax(axis=1)
    assert (np.abs(positions - 4000) <= 800).all() and len(set(positions)) > 10
    assert (shifted.sum(axis=1) == 1.0).all()  # nothing but the impulse, no wrap-around noise


def test_noise_is_added_to_some_clips_only() -> None:
    rng = np.random.default_rng(1)
    noisy = kws.augment(np.zeros((200, 1000), np.float32),
                        {"noise_max": 0.01, "noise_probability": 0.5}, rng, 8000)
    levels = noisy.std(axis=1)
    assert 40 < (levels == 0).sum() < 160 and levels.max() < 0.011


def test_spec_augment_masks_bands_without_touching_the_input() -> None:
    batch = np.ones((20, 49, 10), np.float32)
    settings = {"time_masks": 2, "time_mask_max": 5, "coefficient_masks": 1,
                "coefficient_mask_max": 2}
    masked = kws.spec_augment(batch, settings, np.random.default_rng(2))
    assert batch.min() == 1.0
    zero_fraction = (masked == 0).mean()
    assert 0.02 < zero_fraction < 0.4
    assert (masked[:, :, 0] == 1).mean() > 0.7  # c0 (loudness) is only hit by time masks


def test_ds_cnn_width_multiplier_and_pruning_shrink_the_model() -> None:
    from training.compress import apply_pruning, kernel_sparsity, strip_pruning

    recipes = load_recipes()
    full = kws.build_model(recipes["kws_b"], (49, 10), 8)
    narrow = kws.build_model(recipes["kws_c"], (49, 10), 8)
    assert full.output_shape == (None, 8)
    assert narrow.count_params() < 0.7 * full.count_params()
    pruned = apply_pruning(full, recipes["kws_b"].pruning, steps_per_epoch=1)
    # Before training nothing is pruned (the schedule starts at 0.40). Not exactly 0: about one
    # fresh model in 40 draws a weight of exactly 0.0 among its 77,000 (uniform init).
    assert kernel_sparsity(strip_pruning(pruned)) < 1e-4


def test_an_open_set_recipe_with_phrase_windows_adds_fresh_unknown_windows_every_epoch() -> None:
    from dataclasses import replace

    from tinyml_core.frontend import FrontEnd
    from training.negatives import Negatives

    recipe = load_recipes()["kws_b"]
    recipe = replace(recipe, augment={}, open_set={"silence_per_epoch": 5,
                                                   "phrase_windows_per_epoch": 12})
    assert recipe.front_end is not None
    rate, length = recipe.front_end.sample_rate, recipe.front_end.clip_samples
    rng = np.random.default_rng(5)
    noise = [("hiss", rng.normal(0, 0.01, 4 * rate).astype(np.float32))]
    words = [(rate, (rng.normal(0, 0.1, rate) * 32767).astype(np.int16)) for _ in range(4)]
    negatives = Negatives(Path("."), {"train": words}, {"train": ["w"] * 4},
                          {"train": [("hiss", rate, noise[0][1])]})
    labels = [*speech.labels(), "unknown", "silence"]
    open_set = kws.OpenSet.for_recipe(recipe, negatives, labels)
    assert len(open_set.phrase_words) == 4 and open_set.phrase_windows_per_epoch == 12
    audio = rng.normal(0, 0.1, (20, length)).astype(np.float32)
    targets = np.arange(20) % 8
    front_end = FrontEnd(recipe.front_end)
    sequence = kws.AugmentedFeatures(audio, targets, front_end, np.zeros(10), np.ones(10),
                                     recipe, open_set)
    first = sequence.x.copy()
    assert len(sequence.y) == 20 + 12 + 5
    assert (sequence.y == labels.index("unknown")).sum() == 12
    assert (sequence.y == labels.index("silence")).sum() == 5
    assert sorted(sequence.y[sequence.y < 8]) == sorted(targets)
    sequence.on_epoch_end()
    assert len(sequence.y) == 37 and not np.array_equal(first, sequence.x)

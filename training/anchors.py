"""``python -m training.anchors kws_b [--models DIR] [--count 2000]``: a keyword model's anchors.

An enrolled node's last layer (collector/enrollment/adapt.py) is fitted to a household's takes and,
beside them, to these: the model's own embeddings of a sample of the windows it was trained on
(keywords of the training split, the negatives' training words as ``unknown``, crops of the
training part of the noise recordings as ``silence``), with their labels. Without them the
layer forgets what the takes do not show: a kitchen's noise, measured on the households'
streams, then drew 100-170 false accepts an hour. They are stored beside the model
(``<model>.anchors.npz``, ~100 kB for kws_b), named with their sha256 and the model's in its
manifest entry, so the collector needs no dataset.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from collector.settings import KEYWORD_MODELS
from tinyml_core.cli import add_logging_arguments, run_main, setup_logging
from tinyml_core.models import (
    ANCHORS_SUFFIX,
    KeywordSpotter,
    file_sha256,
    load_keyword_spotter,
    read_manifest,
    write_manifest_entry,
)

from .negatives import Negatives, silence_clips, speaker
from .speech import SpeechData, split_paths

RATE = 16_000
SHARES = {"keywords": 0.6, "unknown": 0.2, "silence": 0.2}


def anchor_sample(spotter: KeywordSpotter, speech: SpeechData, negatives: Negatives,
                  count: int, seed: int = 0, keep: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of ``count`` training windows (60 % keywords of the training
    split, only the clips at ``keep`` when given, e.g. a speaker fold's; 20 % negatives'
    training words; 20 % noise crops)."""
    rng = np.random.default_rng(seed)
    candidates = np.arange(len(speech.clips["train"])) if keep is None else np.asarray(keep)
    keywords = rng.choice(candidates, int(count * SHARES["keywords"]), replace=False)
    clips = [speech.clips["train"][i] for i in keywords]
    targets = [int(speech.targets["train"][i]) for i in keywords]
    words = rng.choice(len(negatives.words["train"]), int(count * SHARES["unknown"]),
                       replace=False)
    clips += [negatives.words["train"][i] for i in words]
    targets += [spotter.labels.index("unknown")] * len(words)
    noise = silence_clips(negatives.noise_audio("train", RATE), int(count * SHARES["silence"]),
                          RATE, rng, (-50.0, -20.0))
    clips += [(RATE, crop) for crop in noise]
    targets += [spotter.labels.index("silence")] * len(noise)
    features = np.stack([spotter.features(samples, rate) for rate, samples in clips])
    return spotter.embed_features(features), np.asarray(targets)


def fold_keep(speech: SpeechData, fold: int, folds: int) -> list[int]:
    """The training clips a speaker fold's model trained on (not its held-out speakers')."""
    from .speakers import fold_of

    return [i for i, path in enumerate(split_paths(speech.root, "train"))
            if fold_of(speaker(path), folds) != fold]


def write_anchors(models_dir: Path, name: str, embeddings: np.ndarray,
                  targets: np.ndarray) -> dict[str, object]:
    """Store the anchors beside the model and name them in its manifest entry."""
    buffer = io.BytesIO()
    # An int8 model's embeddings take 256 values: their codes compress to a third of float16.
    levels = np.unique(embeddings)
    if len(levels) <= 256:
        codes = np.searchsorted(levels, embeddings).astype(np.uint8)
        np.savez_compressed(buffer, codes=codes, levels=levels.astype(np.float32),
                            targets=targets.astype(np.int8))
    else:
        np.savez_compressed(buffer, embeddings=embeddings.astype(np.float16),
                            targets=targets.astype(np.int8))
    data = buffer.getvalue()
    file_name = f"{name}{ANCHORS_SUFFIX}"
    (models_dir / file_name).write_bytes(data)
    entry = read_manifest(models_dir)[name]
    entry["anchors"] = {"file": file_name, "sha256": file_sha256(data),
                        "model_sha256": entry["sha256"], "count": len(targets),
                        "bytes": len(data),
                        "command": f"python -m training.anchors {name}"}
    write_manifest_entry(models_dir, name, entry)
    return entry["anchors"]  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.anchors",
                                     description=__doc__.split("\n\n")[1].split("\n")[0])
    parser.add_argument("model", choices=KEYWORD_MODELS)
    parser.add_argument("--models", type=Path, default=None, help="default: models/")
    parser.add_argument("--count", type=int, default=1000, help="windows (default 1000)")
    parser.add_argument("--fold", type=int, nargs=2, metavar=("K", "N"),
                        help="the model is speaker fold K of N's: sample only what it trained on")
    parser.add_argument("--seed", type=int, default=0)
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args)
    from . import MODELS_DIR

    directory = args.models or MODELS_DIR
    spotter = load_keyword_spotter(directory, args.model, embedding=True)
    speech = SpeechData.load(parts=("train",), show_progress=False)
    keep = fold_keep(speech, *args.fold) if args.fold else None
    embeddings, targets = anchor_sample(spotter, speech, Negatives.load(), args.count,
                                        args.seed, keep)
    written = write_anchors(directory, args.model, embeddings, targets)
    print(f"{args.model}: {written['count']} anchors, {written['bytes']} bytes "
          f"({directory / str(written['file'])})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

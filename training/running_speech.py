"""Real running speech that holds none of the keywords: "not a keyword" for open-set training.

A home's microphone hears people talk, not only single words; mini speech commands and the
negatives hold single words only. Debian main ships real recorded speech: the Asterisk
telephony prompts (``asterisk-core-sounds-en-wav``: 568 prompts of one US English speaker,
8 kHz WAV; CC-BY-SA 3.0 / CC-BY 3.0, per the package's copyright file). They are read from
the installed package, or from ``data/running_speech/`` where ``apt-get download`` and
``dpkg-deb -x`` put them (nothing is installed, nothing is committed). Prompts whose name
holds a keyword ("vm-no", "goodbye") are left out. Prompts are split by a hash of their name:
70 % train, 10 % validation, 20 % held back (the benchmarks' running speech).
"""

from __future__ import annotations

import logging
import subprocess
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinyml_core.frontend import resample, to_float
from tinyml_core.recordings import RecordingError, read_wav

from . import DATA_DIR
from .climate import DataError

if TYPE_CHECKING:
    from .stream import Stream

log = logging.getLogger(__name__)

PACKAGE = "asterisk-core-sounds-en-wav"
INSTALLED = Path("/usr/share/asterisk/sounds")
EXTRACTED = DATA_DIR / "running_speech"
SOURCE = (f"{PACKAGE} (Debian main; Asterisk core sound prompts, one US English speaker; "
          "CC-BY-SA 3.0 / CC-BY 3.0): prompts whose name holds no keyword")
PARTS = ("train", "validation", "test")


def part_of(name: str) -> str:
    bucket = zlib.crc32(name.encode()) % 100
    return "train" if bucket < 70 else "validation" if bucket < 80 else "test"


def prompt_files(keywords: tuple[str, ...], root: Path | None = None) -> list[Path]:
    """The package's prompts (every voice folder under ``sounds``), none whose name holds a
    keyword; fetched into data/ when the package is not installed."""
    folders = [root] if root is not None else [INSTALLED, EXTRACTED / "usr/share/asterisk/sounds"]
    for folder in folders:
        if folder.is_dir() and any(folder.rglob("*.wav")):
            break
    else:
        folder = _extract()
    return sorted(path for path in folder.rglob("*.wav")
                  if not any(word in path.stem.lower() for word in keywords))


def load(keywords: tuple[str, ...], rate: int, root: Path | None = None
         ) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each part's prompts as (name, float audio at ``rate``)."""
    parts: dict[str, list[tuple[str, np.ndarray]]] = {part: [] for part in PARTS}
    for path in prompt_files(keywords, root):
        try:
            clip_rate, samples = read_wav(path)
        except RecordingError as error:
            log.warning("running speech: %s skipped (%s)", path.name, error)
            continue
        parts[part_of(path.stem)].append((path.stem, resample(to_float(samples), clip_rate,
                                                              rate)))
    if not parts["train"]:
        raise DataError(f"no running speech found ({PACKAGE})")
    return parts


def describe(parts: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, object]:
    return {"dataset": SOURCE, "split": "by crc32 of the prompt name: < 70 train, < 80 "
                                        "validation, else held back",
            "prompts": {part: len(items) for part, items in parts.items()}}


def _extract() -> Path:
    """``apt-get download`` the package into data/ and unpack it (no root needed)."""
    EXTRACTED.mkdir(parents=True, exist_ok=True)
    try:
        debs = sorted(EXTRACTED.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            log.info("fetching %s (18 MB) with apt-get download", PACKAGE)
            subprocess.run(["apt-get", "download", "-q", PACKAGE], cwd=EXTRACTED, check=True,
                           capture_output=True, timeout=600)
            debs = sorted(EXTRACTED.glob(f"{PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(EXTRACTED)], check=True,
                       capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError, IndexError) as error:
        raise DataError(f"running speech: {PACKAGE} could not be fetched ({error}); on Debian, "
                        f"`apt-get install {PACKAGE}` puts it in {INSTALLED}") from None
    return EXTRACTED / "usr/share/asterisk/sounds"


def talk_stream(keywords: tuple[str, ...], part: str, noise: list[tuple[str, np.ndarray]],
                seed: int = 0) -> tuple[Stream, list[bytes]]:
    """One part's prompts one after the other, 1.5-3.5 s apart over the room tone of
    ``noise`` (training/stream.py), and the node's sound events of it: a household talking,
    where every keyword result is false. DataError when the prompts cannot be had."""
    from .stream import RATE, build_stream, capture_events

    prompts = load(keywords, RATE)[part]
    stream = build_stream([], [(RATE, audio) for _, audio in prompts], noise, seed=seed,
                          phrase_share=0.0, noise_bursts_per_keyword=0.0)
    return stream, capture_events(stream)

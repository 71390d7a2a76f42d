"""Model building: datasets → Keras (tf_keras) → pruning → quantization → models/.

The only package that imports TensorFlow (and only in the modules that train: build,
forecast, kws, compress; evaluate, latency, climate and report run without it).
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DATA_DIR = REPO_ROOT / "data"  # git-ignored: extracted datasets
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

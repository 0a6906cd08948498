"""Where the project's files are, worked out once.

PROJECT_ROOT: the repository's top folder. DEFAULT_WEIGHTS_DIR: the shipped weights
(``weights/``). DEFAULT_DATA_ROOT: the real CT data set, ``$SEGMENTER_DATA_ROOT`` or
``../shared/data`` beside the repository (training, evaluation and benchmarks only; the
service never reads it).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS_DIR = PROJECT_ROOT / "weights"
DEFAULT_DATA_ROOT = Path(os.environ.get("SEGMENTER_DATA_ROOT") or PROJECT_ROOT.parent / "shared" / "data")

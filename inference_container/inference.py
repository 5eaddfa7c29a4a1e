"""SageMaker PyTorch serving entry point (``inference.py`` convention, this folder as ``source_dir``).

The handlers (``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``) are
:mod:`dicomflow.inference.handlers`; they run in the SageMaker PyTorch serving image and behind
:mod:`inference_container.serve`.

``dicomflow`` reaches the serving image the SageMaker SDK way: ``PyTorchModel(...,
dependencies=["dicomflow"])`` repacks it into ``model.tar.gz`` as ``code/lib/dicomflow`` next to
this file, and the first lines below put ``code/lib`` on ``sys.path`` (the toolkit puts only
``code/`` there). Where ``dicomflow`` is installed (the dicomflow image, a dev checkout) the
vendored copy, if any, is found first (unless ``dicomflow`` is already imported).
"""

from __future__ import annotations

import sys
from pathlib import Path

_LIB = Path(__file__).resolve().parent / "lib"
if (_LIB / "dicomflow").is_dir() and str(_LIB) not in sys.path:
    sys.path.insert(0, str(_LIB))

from dicomflow.inference.handlers import input_fn, model_fn, output_fn, predict_fn  # noqa: E402 - after the path setup

__all__ = ["input_fn", "model_fn", "output_fn", "predict_fn"]

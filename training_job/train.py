"""SageMaker training entry point (``sagemaker.pytorch.PyTorch(entry_point="train.py", source_dir="training_job")``).

A thin wrapper: hyperparameters arrive as ``--name value`` arguments and in ``SM_HPS``, the data in
``SM_CHANNEL_TRAIN`` (``manifest.jsonl`` + ``classes.json`` + the staged DICOM files), the model goes
to ``SM_MODEL_DIR``; everything else is ``dicomflow.training``.
"""

import sys
from pathlib import Path

# The estimator ships the dicomflow package next to this file (``dependencies=[...]``); the
# Dockerfile installs it. Either way it must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicomflow.training.entry import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

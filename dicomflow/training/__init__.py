"""SageMaker training for dicomflow models (run by ``training_job/train.py``).

Modules: ``hyperparameters`` (parsing + validation), ``environment`` (the SageMaker training
contract: paths, hosts, distributed setup), ``data`` (training manifest -> datasets), ``metrics``
(AUROC, Dice & co, the ``name=value;`` lines), ``checkpoints`` (save / resume), ``loop`` (the
per-task training loop) and ``entry`` (``main``: failure file, exit status).
"""

from dicomflow.training.metrics import METRIC_DEFINITIONS, METRIC_NAMES

__all__ = ["METRIC_DEFINITIONS", "METRIC_NAMES"]

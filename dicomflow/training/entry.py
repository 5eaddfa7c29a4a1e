"""``main``: the SageMaker training entry point around :func:`dicomflow.training.loop.train`.

Exit status 0 on success; on failure the reason goes to ``<SM_OUTPUT_DIR or /opt/ml/output>/failure``
(SageMaker's FailureReason), one line to stderr, and the status is 1 (2 for bad hyperparameters).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from dicomflow.config import runtime
from dicomflow.errors import DicomflowError
from dicomflow.training.environment import failure_path, from_env
from dicomflow.training.hyperparameters import HyperparameterError, parse

log = logging.getLogger("dicomflow.training")


def _write_failure(message: str) -> None:
    path = failure_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1024] + "\n")  # SageMaker keeps the first 1024 characters
    except OSError as exc:
        print(f"could not write the failure file {path}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse hyperparameters and the environment, train, write the artifact; returns the exit status."""
    logging.basicConfig(level=runtime().log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else list(argv)
    import dicomflow

    # where the library came from: the copy shipped next to the entry point (estimator dependencies)
    # or the one installed in the image
    log.info("dicomflow %s from %s", dicomflow.__version__, Path(dicomflow.__file__).resolve().parent)
    try:
        hp = parse(argv)
        tenv = from_env(checkpoint_dir=hp.checkpoint_dir)
        from dicomflow.training.loop import train

        metrics = train(hp, tenv)
    except HyperparameterError as exc:
        _write_failure(f"HyperparameterError: {exc}")
        print(f"training failed: {exc}", file=sys.stderr)
        return 2
    except DicomflowError as exc:
        _write_failure(f"{type(exc).__name__}: {exc}")
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # unexpected: keep the traceback in the log, the reason in the failure file
        traceback.print_exc()
        _write_failure(f"{type(exc).__name__}: {exc}")
        return 1
    if metrics:
        log.info("training finished; best metric %.4f at epoch %d", metrics.get("best_metric", float("nan")),
                 metrics.get("best_epoch", 0))
    return 0

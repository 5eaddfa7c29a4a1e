"""SageMaker training entry point (``sagemaker.pytorch.PyTorch(entry_point="train.py", source_dir="training_job")``).

Training: hyperparameters arrive as ``--name value`` arguments and in ``SM_HPS``, the data in
``SM_CHANNEL_TRAIN`` (``manifest.jsonl`` + ``classes.json`` + the staged DICOM files), the model goes
to ``SM_MODEL_DIR``; everything else is ``dicomflow.training``.

Serving: the same file is the entry point ``estimator.deploy()`` gives the PyTorch serving container,
so it offers the serving handlers (``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn`` of
:mod:`dicomflow.inference.handlers`), imported only when the serving toolkit asks for them: a
training run never loads the inference stack.
"""

import sys
from pathlib import Path

# The estimator ships the dicomflow package next to this file (``dependencies=[...]``); in a model
# repacked for serving it is under ``code/lib``; the Dockerfile installs it. Either way it must be importable.
_HERE = Path(__file__).resolve().parent
for _path in (_HERE / "lib", _HERE):
    if (_path / "dicomflow").is_dir() and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

_SERVING = ("model_fn", "input_fn", "predict_fn", "output_fn")


def __getattr__(name: str):
    """The serving handlers, on first use (``hasattr(module, "model_fn")`` is how the toolkit asks)."""
    if name in _SERVING:
        from dicomflow.inference import handlers

        return getattr(handlers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from dicomflow.training.entry import main

    sys.exit(main())

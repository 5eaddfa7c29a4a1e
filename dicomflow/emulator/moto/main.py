"""Entry point of the emulated-AWS process: load dicomflow's moto additions, then serve.

Additions (each documented in its module):

* :mod:`dicomflow.emulator.moto.lambda_host` - zip Lambda functions run as host Python subprocesses (invoke,
  ``InvocationType=Event``, S3 ObjectCreated notifications), logs in CloudWatch Logs;
* :mod:`dicomflow.emulator.moto.sagemaker_runtime` - ``InvokeEndpoint`` / ``InvokeEndpointAsync`` dispatched to the
  endpoint's local serving process found by :func:`dicomflow.emulator.moto.endpoints.resolve_serving`.
* :mod:`dicomflow.emulator.moto.training_jobs` - ``CreateTrainingJob`` runs the job (host processes), uploads its
  artifact, logs to CloudWatch Logs; ``StopTrainingJob``.
* :mod:`dicomflow.emulator.moto.transform_jobs` - ``CreateTransformJob`` runs the Model's serving container over
  the S3 input and writes ``<input>.out`` objects; ``StopTransformJob``.
* :mod:`dicomflow.emulator.moto.autoscaling` - async endpoints scale with their Application Auto Scaling
  registration and publish their backlog metrics to CloudWatch.
* :mod:`dicomflow.emulator.moto.multi_model` - multi-model endpoints load the ``TargetModel`` a request names.

* :mod:`dicomflow.emulator.moto.persistence` - the AWS state is restored before the server answers and
  saved while it changes, so it survives ``dicomflow down`` / ``up``, a reboot and ``kill -9``.

On SIGTERM / SIGINT the handler processes, serving processes and training jobs it started are stopped,
then the state is saved one last time.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_saver: Any = None


def install(endpoint_url: str) -> None:
    """Load the additions into moto (in this process)."""
    from dicomflow.emulator.moto import lambda_host, sagemaker_runtime, training_jobs, transform_jobs

    lambda_host.configure(endpoint_url)
    lambda_host.install()
    sagemaker_runtime.install()
    training_jobs.configure(endpoint_url)
    training_jobs.install()
    transform_jobs.install()


def _shutdown(signum: int, _frame: FrameType | None) -> None:
    from dicomflow.emulator.moto import endpoints, lambda_host, sagemaker_runtime, training_jobs, transform_jobs

    training_jobs.stop_all()
    transform_jobs.stop_all()
    lambda_host.stop_all()
    sagemaker_runtime.stop_all()
    endpoints.stop_all()
    if _saver is not None:
        _saver.stop()
    sys.exit(0)


def _noting_changes(app: Callable, changed: Callable[[], None]) -> Callable:
    """The WSGI app, telling ``changed`` after every request (reads too: JSON APIs write by POST as well)."""

    def wrapped(environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            yield from app(environ, start_response)
        finally:
            changed()

    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install(f"http://{args.host}:{args.port}")

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.server import run_simple

    from dicomflow.config import runtime
    from dicomflow.emulator.moto import persistence, training_jobs, transform_jobs

    global _saver
    directory = persistence.state_dir()
    persistence.restore(directory)
    training_jobs.fail_interrupted()
    transform_jobs.fail_interrupted()
    _saver = persistence.Saver(directory, runtime().aws_snapshot_seconds)
    _saver.start()
    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    app = _noting_changes(DomainDispatcherApplication(create_backend_app), _saver.changed)
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()

"""Entry point of the emulated-AWS process: load dicomflow's moto additions, then serve.

Additions (each documented in its module):

* :mod:`dicomflow.emulator.moto.lambda_host` - zip Lambda functions run as host Python subprocesses (invoke,
  ``InvocationType=Event``, S3 ObjectCreated notifications), logs in CloudWatch Logs;
* :mod:`dicomflow.emulator.moto.sagemaker_runtime` - ``InvokeEndpoint`` / ``InvokeEndpointAsync`` dispatched to the
  endpoint's local serving process found by :func:`dicomflow.emulator.moto.endpoints.resolve_serving`.

On SIGTERM / SIGINT the handler processes and serving processes it started are stopped first.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType


def install(endpoint_url: str) -> None:
    """Load the additions into moto (in this process)."""
    from dicomflow.emulator.moto import lambda_host, sagemaker_runtime

    lambda_host.configure(endpoint_url)
    lambda_host.install()
    sagemaker_runtime.install()


def _shutdown(signum: int, _frame: FrameType | None) -> None:
    from dicomflow.emulator.moto import endpoints, lambda_host, sagemaker_runtime

    lambda_host.stop_all()
    sagemaker_runtime.stop_all()
    endpoints.stop_all()
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install(f"http://{args.host}:{args.port}")
    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.server import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()

"""The local cloud (Orthanc PACS + emulated AWS) and its helpers for local mode.

Only the CLI and the tests import this package; lambdas, containers and the core library never
do: the endpoint URL is the only switch between emulated and real AWS.
"""


def __getattr__(name: str):
    """Lazy re-export: ``from dicomflow.local import sagemaker_session`` without importing the SDK eagerly."""
    if name == "sagemaker_session":
        from dicomflow.local.sagemaker import sagemaker_session

        return sagemaker_session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

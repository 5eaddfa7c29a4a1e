"""SageMaker Python SDK v2 local mode without Docker: training and serving containers run as host processes
that honour the SageMaker contracts (:mod:`.session`, :mod:`.compose`, :mod:`.toolkit`, :mod:`.serving`)."""


def __getattr__(name: str):
    """Lazy re-export of :func:`.session.sagemaker_session` (importing the SDK is slow)."""
    if name == "sagemaker_session":
        from dicomflow.emulator.sagemaker_sdk.session import sagemaker_session

        return sagemaker_session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""SageMaker serving container for dicomflow models (``python -m inference_container.serve``)."""

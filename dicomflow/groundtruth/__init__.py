"""SageMaker Ground Truth's custom-workflow logic: manifests, the pre-label task, consolidation, label sets, signed URLs, the CreateLabelingJob request. Lambda-safe: no torch."""

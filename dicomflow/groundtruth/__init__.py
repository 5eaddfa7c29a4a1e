"""SageMaker Ground Truth's custom-workflow logic, as the Lambdas and the CLI use it: input manifests, the
pre-label task, consolidation, label sets, signed WADO URLs, the CreateLabelingJob request and its submission.

Lambda-safe: needs no torch.
"""

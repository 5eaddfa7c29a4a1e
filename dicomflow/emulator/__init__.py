"""The local cloud (no AWS account, no Docker): the process supervisor (:mod:`.cloud`), add-ins loaded into
the moto server (:mod:`.moto`), SageMaker SDK host mode (:mod:`.sagemaker_sdk`) and local Ground Truth
(:mod:`.groundtruth`).

Nothing in product code imports this package: the endpoint URL is the only switch between emulated and
real AWS.
"""

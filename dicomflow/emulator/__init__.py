"""The local cloud (no AWS account, no Docker): process supervisor, moto add-ins, SageMaker SDK host mode, local Ground Truth.

Nothing in product code imports this package; the endpoint URL is the only switch between emulated and real AWS."""

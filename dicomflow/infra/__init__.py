"""Infrastructure as code: package the Lambdas, deploy/destroy the CloudFormation stack. One module per job:

* :mod:`~dicomflow.infra.template` - the template as data (tags, parameter checks, intrinsics);
* :mod:`~dicomflow.infra.package` - deterministic Lambda zips and their upload;
* :mod:`~dicomflow.infra.stack` - create/update/wait/outputs/destroy through boto3;
* :mod:`~dicomflow.infra.emulator_fixups` - emulator-only fix-ups for what moto's CloudFormation skips;
* :mod:`~dicomflow.infra.deployment` - package, deploy and set the PACS secret in one step.

The Ground Truth labeling-job request built from the stack's outputs is :mod:`dicomflow.groundtruth.job_request`.
"""

from dicomflow.infra.errors import InfraError
from dicomflow.infra.stack import DEFAULT_STACK, deploy, destroy, outputs

__all__ = ["DEFAULT_STACK", "InfraError", "deploy", "destroy", "outputs"]

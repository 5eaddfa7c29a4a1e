"""Infrastructure as code: package the Lambdas, deploy/destroy the CloudFormation stack, and build the
Ground Truth labeling-job request from the stack's outputs. One module per job:

* :mod:`~dicomflow.infra.template` - the template as data (tags, parameter checks, intrinsics);
* :mod:`~dicomflow.infra.package` - deterministic Lambda zips and their upload;
* :mod:`~dicomflow.infra.stack` - create/update/wait/outputs/destroy through boto3;
* :mod:`~dicomflow.infra.emulator` - emulator-only fix-ups for what moto's CloudFormation skips;
* :mod:`~dicomflow.infra.labeling_job` - the CreateLabelingJob request and its submission.
"""

from dicomflow.infra.errors import InfraError
from dicomflow.infra.labeling_job import labeling_job_request, submit_to_ground_truth, upload_labeling_config
from dicomflow.infra.stack import DEFAULT_STACK, deploy, destroy, outputs

__all__ = ["DEFAULT_STACK", "InfraError", "deploy", "destroy", "labeling_job_request", "outputs",
           "submit_to_ground_truth", "upload_labeling_config"]

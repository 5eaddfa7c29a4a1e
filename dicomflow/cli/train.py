"""``dicomflow train``: run the training job (:mod:`dicomflow.training.launch`) with the SageMaker estimator.

``--instance-type local`` runs it on this machine through the SDK's local mode with the local cloud's
session (no Docker: the entry point runs as host processes); any ``ml.*`` type is a managed training
job: on SageMaker in the configured account, or on the local cloud's emulated SageMaker when
``AWS_ENDPOINT_URL`` points at it (``eval "$(dicomflow env)"``).
"""

from __future__ import annotations

import os

import click

from dicomflow import aws
from dicomflow.cli.common import console, json_option, print_json
from dicomflow.inference.endpoint import DEFAULT_IMAGE
from dicomflow.modeling import registry
from dicomflow.modeling.contract import TASKS
from dicomflow.training.launch import TrainError, parse_hps, sdk_logs_to_stderr, train_job


@click.command("train")
@click.option("--task", type=click.Choice(TASKS), required=True, help="What to train.")
@click.option("--data", required=True, help="Training channel: s3:// prefix from `dicomflow dataset export`.")
@click.option("--instance-type", default="local", show_default=True,
              help="local (SDK local mode, no Docker) or a SageMaker type such as ml.m5.xlarge (a managed "
                   "job: SageMaker, or the local cloud when AWS_ENDPOINT_URL points at it).")
@click.option("--instance-count", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Hosts; > 1 trains with torch.distributed (gloo on CPU, nccl on GPU).")
@click.option("--hp", "hp_pairs", multiple=True, metavar="KEY=VALUE",
              help="Hyperparameter (repeatable): epochs, batch_size, lr, lr_schedule (constant or cosine), "
                   "image_size, spatial_size, "
                   "spacing (segmentation3d at that voxel size in mm, on patches), intensity (percentile or "
                   "zscore), val_every (validate every N epochs), ...")
@click.option("--output", default=None, help="S3 prefix for model.tar.gz [s3://<default bucket>/dicomflow/models/].")
@click.option("--role", default=None, help="SageMaker execution role ARN [env DICOMFLOW_SAGEMAKER_ROLE].")
@click.option("--image-uri", default=None, help="Training image built from training_job/Dockerfile.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Stream logs and wait for the end.")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the trained model as a new version (pending approval) in the Model Registry.")
@click.option("--model-package-group", "group", help="Model Package Group to register in [dicomflow-<task>].")
@click.option("--serving-image", default=lambda: os.environ.get("DICOMFLOW_INFERENCE_IMAGE", DEFAULT_IMAGE),
              show_default=f"$DICOMFLOW_INFERENCE_IMAGE or {DEFAULT_IMAGE}",
              help="The image that serves the registered model.")
@json_option
def train(task: str, data: str, instance_type: str, instance_count: int, hp_pairs: tuple[str, ...],
          output: str | None, role: str | None, image_uri: str | None, wait: bool, register: bool,
          group: str | None, serving_image: str, as_json: bool) -> None:
    """Train a model on an exported dataset with the SageMaker PyTorch estimator, and register it."""
    if group:
        registry.check_group(group)
    try:
        aws.parse_s3_uri(data)
    except ValueError as exc:
        raise TrainError(f"--data: {exc}") from None
    session = None
    sdk_logs_to_stderr()  # stdout is for the result (and --json) alone
    if instance_type.startswith("local"):
        from dicomflow.emulator.sagemaker_sdk import sagemaker_session

        session = sagemaker_session()
    result = train_job(task, data, instance_type=instance_type, instance_count=instance_count,
                       hps=parse_hps(hp_pairs), output=output, role=role, image_uri=image_uri, wait=wait,
                       session=session)
    if register and wait and result.get("status") == "Completed" and result.get("model_artifact"):
        version = registry.register(group or registry.default_group(task), str(result["model_artifact"]),
                                    serving_image, training_job=result["job_name"])
        result["registered"] = {"group": version.group, "version": version.version, "arn": version.arn,
                                "status": version.status}
    if as_json:
        print_json(result)
        return
    console.print(f"training job {result['job_name']}: {result.get('status', 'started')}")
    for name, value in sorted((result.get("metrics") or {}).items()):
        console.print(f"  {name} = {value:.4f}")
    if result.get("model_artifact"):
        console.print(f"model: {result['model_artifact']}", soft_wrap=True)
    if result.get("curves"):
        console.print(f"training curves: {', '.join(result['curves']['files'])} in {result['curves']['archive']} "
                      "(beside the TensorBoard events)", soft_wrap=True)
    if result.get("registered"):
        reg = result["registered"]
        console.print(f"registered: {reg['group']} version {reg['version']} ({reg['status']}); approve it with "
                      f"`dicomflow models approve {reg['group']} {reg['version']}`", soft_wrap=True)
    if result.get("status") == "Failed":
        raise TrainError(f"training job failed: {result.get('failure_reason')}")

"""The seed notebook's cells against whatever AWS the environment names (``eval "$(dicomflow env)"``).

``python notebook.py DATA_URI STUDY_UID SOURCE_DIR PACKAGE_DIR``: managed ``PyTorch(...).fit`` on
``ml.m5.xlarge``, ``deploy`` real-time and ``predict`` a study JSON, ``deploy`` asynchronous and
``predict_async``; prints one JSON line with what it saw. An audit hook records every name lookup and
connection to a host that is not loopback (``"remote"``) and every loopback one (``"loopback"``), so
the caller can prove the notebook reached nothing but the local cloud.
"""

import json
import sys
import uuid

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
seen = {"remote": [], "loopback": 0}


def _audit(event, args):
    if event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = str(args[1][0])
    else:
        return
    if host in LOOPBACK:
        seen["loopback"] += 1
    else:
        seen["remote"].append(f"{event} {host}")


sys.addaudithook(_audit)

data, study, source_dir, package_dir = sys.argv[1:5]

import sagemaker  # noqa: E402
from sagemaker.async_inference import AsyncInferenceConfig  # noqa: E402
from sagemaker.async_inference.waiter_config import WaiterConfig  # noqa: E402
from sagemaker.deserializers import JSONDeserializer  # noqa: E402
from sagemaker.pytorch import PyTorch  # noqa: E402
from sagemaker.serializers import JSONSerializer  # noqa: E402

session = sagemaker.Session()
bucket = session.default_bucket()
role = "arn:aws:iam::123456789012:role/dicomflow-sagemaker"
estimator = PyTorch(entry_point="train.py", source_dir=source_dir, dependencies=[package_dir], role=role,
                    instance_type="ml.m5.xlarge", instance_count=1, framework_version="2.5", py_version="py311",
                    hyperparameters={"task": "classification2d", "epochs": 2, "image_size": 32, "batch_size": 4,
                                     "val_fraction": 0.25},
                    metric_definitions=[{"Name": "val_mean_auroc", "Regex": r"val_mean_auroc=([0-9.]+)"},
                                        {"Name": "epoch", "Regex": r"epoch=([0-9]+);"}],
                    sagemaker_session=session)
estimator.fit({"train": data})
result = {"job": estimator.latest_training_job.name, "model_data": estimator.model_data}

predictor = estimator.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge",
                             serializer=JSONSerializer(), deserializer=JSONDeserializer())
try:
    result["realtime"] = predictor.predict({"studyInstanceUID": study, "outputs": ["json", "sr"]})
finally:
    predictor.delete_endpoint()

sns = session.boto_session.client("sns")
topic = sns.create_topic(Name=f"notebook-{uuid.uuid4().hex[:8]}")["TopicArn"]
output_path = f"s3://{bucket}/notebook/async-output"
async_predictor = estimator.deploy(
    initial_instance_count=1, instance_type="ml.m5.xlarge", serializer=JSONSerializer(),
    deserializer=JSONDeserializer(),
    async_inference_config=AsyncInferenceConfig(output_path=output_path,
                                                notification_config={"SuccessTopic": topic, "ErrorTopic": topic}))
try:
    input_path = f"s3://{bucket}/notebook/async-input/{uuid.uuid4().hex}.json"
    session.upload_string_as_file_body(json.dumps({"studyInstanceUID": study}), bucket,
                                       input_path.split("/", 3)[3])
    response = async_predictor.predict_async(input_path=input_path)
    result["async_output"] = response.output_path
    result["async"] = response.get_result(WaiterConfig(max_attempts=120, delay=1))
    result["async_output_path"] = output_path
finally:
    async_predictor.delete_endpoint()

result["seen"] = seen
print("NOTEBOOK " + json.dumps(result, default=str))

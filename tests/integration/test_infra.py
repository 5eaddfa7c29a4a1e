"""The stack on the emulated AWS: deploy, the deployed pre-label Lambda signs WADO-URIs for a seeded
instance, a second deploy is a no-op, the CreateLabelingJob request built from the outputs is submitted
with its worker template, viewer bundle and label categories, a second deploy with a model adds the async
endpoint and an async invocation of it returns a result in S3OutputPath, a bad parameter gets one clear
line, destroy leaves nothing behind."""

from __future__ import annotations

import dataclasses
import io
import json
from urllib.parse import urlsplit

import jwt
import pytest
from click.testing import CliRunner
from model_helpers import model_tarball, untrained_artifact
from waiting import wait_for

from dicomflow import aws
from dicomflow.api import SCHEMA_FILE
from dicomflow.api.users import sign_in
from dicomflow.cli.infra import infra
from dicomflow.cli.label import start as label_start
from dicomflow.cli.users import users
from dicomflow.config import runtime
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.groundtruth import job_request, manifest, signing
from dicomflow.groundtruth.job_request import JobRequestError
from dicomflow.groundtruth.labels import CHEXPERT_CLASSES
from dicomflow.inference import endpoint as ep
from dicomflow.infra import deployment, emulator_fixups, package, stack
from dicomflow.infra.errors import InfraError
from dicomflow.search import ingest
from dicomflow.search.reports import RuleEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STACK = "dicomflow-itest"
GATEWAY = "http://127.0.0.1:9/wado"
IMAGE = "dicomflow-inference:latest"  # mapped to `python -m inference_container.serve` by images.json (dicomflow up)
WORKTEAM = "arn:aws:sagemaker:us-east-1:123456789012:workteam/private-crowd/itest"
WAIT_S = 90.0  # upper bound for the asynchronous S3 -> Lambda delivery (a bound, not a performance threshold)


def _invoke(function: str, event: dict) -> dict:
    resp = aws.client("lambda").invoke(FunctionName=function, Payload=json.dumps(event).encode())
    payload = json.loads(resp["Payload"].read())
    assert "FunctionError" not in resp, payload
    return payload


def test_stack_deploys_works_and_goes_away(local_cloud, tmp_path) -> None:
    image = synthetic.chest_radiographs(1, seed=7, size=64)[0].dataset
    dicomweb.store(dicomweb.connect(local_cloud.pacs), [image])

    # 1. create: Lambdas packaged + uploaded, stack created, emulator fix-ups applied and reported
    done = deployment.run(STACK, {"GatewayUrl": GATEWAY, "AlertEmail": "ops@example.com"})
    out = done.result.outputs
    assert done.result.action == "create" and done.result.status == "CREATE_COMPLETE"
    assert done.result.emulator
    assert out["PacsDicomwebUrl"] == local_cloud.settings.dicomweb_url
    for key in ("DataBucket", "ArtifactsBucket", "AsyncBucket", "PreLabelFunctionArn", "PostLabelFunctionArn",
                "GroundTruthRoleArn", "SageMakerRoleArn", "PacsSecretArn", "SigningSecretArn", "ErrorTopicArn",
                "RouterFunctionArn", "RoutingTableName", "RoutingDeadLetterQueueUrl", "RoutingRulesUri"):
        assert out.get(key), key
    # the router Lambda gets its table, dead-letter queue, rules and the PACS secret (never a password)
    router_env = aws.client("lambda").get_function_configuration(
        FunctionName=out["RouterFunctionArn"])["Environment"]["Variables"]
    assert (router_env["DICOMFLOW_ROUTING_TABLE"], router_env["DICOMFLOW_ROUTING_DLQ"],
            router_env["DICOMFLOW_ROUTING_RULES"]) == (out["RoutingTableName"], out["RoutingDeadLetterQueueUrl"],
                                                       out["RoutingRulesUri"])
    assert router_env["DICOMFLOW_PACS_SECRET_ARN"] == out["PacsSecretArn"]
    assert "DICOMFLOW_PACS_PASSWORD" not in router_env
    assert "EndpointName" not in out  # no ModelDataUrl -> no endpoint
    fixups = "\n".join(done.result.fixups)
    assert "created secret" in fixups and "subscribed a email endpoint" in fixups
    # the search page's sign-in: a user pool (admin-created users only), its public app client, the two groups;
    # the AppSync API needs the OpenSearch domain (none here), its schema is uploaded beside the Lambda zips
    assert f"created user pool {STACK}-search-users" in fixups
    idp = aws.client("cognito-idp")
    pool = idp.describe_user_pool(UserPoolId=out["SearchUserPoolId"])["UserPool"]
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert pool["Policies"]["PasswordPolicy"]["MinimumLength"] == 12
    client = idp.describe_user_pool_client(UserPoolId=out["SearchUserPoolId"],
                                           ClientId=out["SearchUserPoolClientId"])["UserPoolClient"]
    assert client["ClientName"] == "search-page" and "ClientSecret" not in client
    assert "ALLOW_USER_PASSWORD_AUTH" in client["ExplicitAuthFlows"]
    assert {g["GroupName"] for g in idp.list_groups(UserPoolId=out["SearchUserPoolId"])["Groups"]} == {
        "radiologist", "researcher"}
    assert "SearchApiUrl" not in out
    # dicomflow users: add (a generated password, printed once), ls, sign in with it, rm
    added = CliRunner().invoke(users, ["add", "dr-itest", "--group", "researcher", "--stack", STACK, "--json"])
    assert added.exit_code == 0, added.output
    password = json.loads(added.stdout)["password"]
    listed = json.loads(CliRunner().invoke(users, ["ls", "--stack", STACK, "--json"]).stdout)
    assert [(u["username"], u["groups"], u["status"]) for u in listed] == [("dr-itest", ["researcher"], "CONFIRMED")]
    assert json.loads(CliRunner().invoke(users, ["ls", "--json"]).stdout) == listed  # the stack deployed last
    token = sign_in(out["SearchUserPoolClientId"], "dr-itest", password)["IdToken"]
    assert jwt.decode(token, options={"verify_signature": False})["cognito:groups"] == ["researcher"]
    again = CliRunner().invoke(users, ["add", "dr-itest", "--group", "researcher", "--stack", STACK])
    assert again.exit_code == 1 and "already exists" in str(again.exception)
    assert CliRunner().invoke(users, ["rm", "dr-itest", "--stack", STACK]).exit_code == 0
    assert json.loads(CliRunner().invoke(users, ["ls", "--stack", STACK, "--json"]).stdout) == []
    schema_key = {p["ParameterKey"]: p["ParameterValue"] for p in stack.describe(STACK)["Parameters"]}[
        "SearchApiSchemaKey"]
    assert aws.read(aws.s3_uri(done.packages[0].bucket, schema_key)) == SCHEMA_FILE.read_bytes()
    assert "public access block" in fixups and "TLS-only" in fixups
    assert "PACS secret set" in " ".join(done.notes)
    s3 = aws.client("s3")
    assert s3.get_public_access_block(Bucket=out["DataBucket"])["PublicAccessBlockConfiguration"]["BlockPublicAcls"]
    subs = aws.client("sns").list_subscriptions_by_topic(TopicArn=out["ErrorTopicArn"])["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("email", "ops@example.com")]

    # 2. the deployed pre-label Lambda returns signed WADO-URIs for the seeded instance
    source = {"StudyInstanceUID": image.StudyInstanceUID, "SeriesInstanceUID": image.SeriesInstanceUID,
              "SOPInstanceUID": image.SOPInstanceUID}
    job_arn = "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/itest-job"
    answer = _invoke(out["PreLabelFunctionName"], {"version": "2018-10-16", "labelingJobArn": job_arn,
                                                   "dataObject": {"source": json.dumps(source)}})
    assert answer["isHumanAnnotationRequired"] == "true"
    urls = [i["url"] for i in answer["taskInput"]["instances"]]
    assert len(urls) == 1 and urls[0].startswith(GATEWAY + "?")
    key = signing.signing_key(out["SigningSecretArn"])
    obj = signing.verify_wado_object(urlsplit(urls[0]).query, key, expected_scope="itest-job")
    assert obj.sop_uid == image.SOPInstanceUID
    assert local_cloud.pacs.password not in json.dumps(answer)

    # 3. the same deploy again changes nothing
    again = deployment.run(STACK, {"GatewayUrl": GATEWAY, "AlertEmail": "ops@example.com"})
    assert again.result.action == "no-op"
    assert again.result.fixups == []
    assert [p.sha256 for p in again.packages] == [p.sha256 for p in done.packages]
    assert "PACS secret unchanged" in again.notes

    # 3a. search ingestion: a DICOM object and a report put into the ingest bucket end as items in the search
    # table, a thumbnail and an analysis in the data bucket; a malformed object lands in the dead-letter queue
    # with its reason; the same object again changes nothing
    _ingestion_ends_in_the_table_the_thumbnails_and_the_dlq(out, image)

    # 3b. label start --target aws: template + viewer bundle + categories uploaded, the request built from the
    # outputs passes CreateLabelingJob's shape checks and is submitted
    s3_manifest = f"s3://{out['DataBucket']}/labeling/input/itest.manifest"
    manifest.write_jsonl_s3(s3_manifest, [{"source": json.dumps(source)}])
    result = CliRunner().invoke(label_start, ["--target", "aws", "--stack", STACK, "--workteam", WORKTEAM,
                                              "--job-name", "itest-job", "--manifest", s3_manifest,
                                              "--workers", "3", "--json"])
    ui_uri, categories_uri = job_request.labeling_config_uris(out)
    bucket, key = aws.parse_s3_uri(ui_uri)
    template = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert template.startswith('{% assign viewer_base_url = viewer_base_url | default: "http://127.0.0.1:9/ui/" %}')
    bucket, key = aws.parse_s3_uri(categories_uri)
    categories = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert categories["document-version"] == "2018-11-28"
    assert [c["label"] for c in categories["labels"]] == list(CHEXPERT_CLASSES)
    viewer = s3.list_objects_v2(Bucket=out["DataBucket"], Prefix="labeling/config/viewer/")["Contents"]
    assert "labeling/config/viewer/viewer.js" in {o["Key"] for o in viewer}
    request = job_request.with_workteam(job_request.labeling_job_request(
        out, "itest-job", s3_manifest, WORKTEAM, workers_per_object=3), WORKTEAM)
    job_request.check_request(request)
    if result.exit_code == 0:  # an emulator with CreateLabelingJob: it was accepted as sent
        submitted = json.loads(result.stdout)
        assert submitted["labelingJobArn"].endswith(":labeling-job/itest-job")
        assert submitted["request"] == request
        job = aws.client("sagemaker").describe_labeling_job(LabelingJobName="itest-job")
        assert job["HumanTaskConfig"]["PreHumanTaskLambdaArn"] == out["PreLabelFunctionArn"]
    else:  # moto 5.2.5 has no Ground Truth: one clear line that says what to run instead
        assert isinstance(result.exception, JobRequestError), result.output
        assert "dicomflow label start --job FILE" in str(result.exception)

    # 3c. a deploy with a model adds the SageMaker Model, async EndpointConfig and Endpoint; an async
    # invocation with a study JSON for the seeded study returns a result in S3OutputPath
    model_key = "models/itest/output/model.tar.gz"
    model_dir = untrained_artifact(tmp_path, "classification2d", list(synthetic.CHEST_CLASSES), [32, 32])
    s3.put_object(Bucket=out["ArtifactsBucket"], Key=model_key, Body=model_tarball(model_dir))
    with_model = deployment.run(STACK, {"ModelDataUrl": f"s3://{out['ArtifactsBucket']}/{model_key}",
                                        "InferenceImageUri": IMAGE}, package_lambdas=False)
    assert with_model.result.action == "update"
    out = with_model.result.outputs
    endpoint = out["EndpointName"]
    sm = aws.client("sagemaker")
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    config = ep.async_config(endpoint)
    assert config["OutputConfig"]["S3OutputPath"] == out["AsyncOutputUri"]
    assert config["OutputConfig"]["NotificationConfig"]["ErrorTopic"] == out["ErrorTopicArn"]
    study = {"dicomweb": {"url": out["PacsDicomwebUrl"], "auth": {"secretArn": out["PacsSecretArn"]}},
             "studyInstanceUID": image.StudyInstanceUID, "outputs": ["json"], "storeToPacs": False}
    inv = ep.invoke_async(endpoint, study, config)
    assert inv.input_location.startswith(out["AsyncInputUri"])
    ok, data = ep.wait_result(inv, timeout_s=300)
    assert ok, data[:500]
    assert inv.output_location.startswith(out["AsyncOutputUri"])
    answer = json.loads(data)
    assert set(answer["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES)
    # ... and the endpoint is registered for autoscaling from zero, as the stack declares it
    rid = f"endpoint/{endpoint}/variant/AllTraffic"
    scaling = aws.client("application-autoscaling")
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in target] == [(0, 2)]
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    assert {p["PolicyType"] for p in policies} == {"TargetTrackingScaling", "StepScaling"}
    step = next(p["PolicyARN"] for p in policies if p["PolicyType"] == "StepScaling")
    alarms = aws.client("cloudwatch").describe_alarms()["MetricAlarms"]
    alarm = next(a for a in alarms if a["MetricName"] == "HasBacklogWithoutCapacity"
                 and {"Name": "EndpointName", "Value": endpoint} in a["Dimensions"])
    assert alarm["AlarmActions"] == [step]

    # 4. a bad template parameter: one clear line, nothing changed
    with pytest.raises(InfraError, match=r"UrlTtlSeconds='5' is below the minimum 60"):
        deployment.run(STACK, {"UrlTtlSeconds": "5"}, package_lambdas=False)
    result = CliRunner().invoke(infra, ["deploy", "--stack", STACK, "--no-package", "--param", "Nope=1"])
    assert isinstance(result.exception, InfraError) and "unknown template parameter(s) Nope" in str(result.exception)
    assert stack.describe(STACK)["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE")

    # 5. destroy leaves nothing behind: no stack, buckets, secrets, subscriptions, functions, roles
    deploy_bucket = package.deploy_bucket_name()
    s3.put_object(Bucket=out["AsyncBucket"], Key="async/input/x.json", Body=b"{}")
    notes = stack.destroy(STACK, deploy_bucket=deploy_bucket)
    assert f"deleted stack {STACK}" in notes
    assert stack.describe(STACK) is None
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert not buckets & {out["DataBucket"], out["ArtifactsBucket"], out["AsyncBucket"]}
    others = stack.stacks_using_bucket(deploy_bucket)  # other tests' stacks share the session's deploy bucket
    if others:
        assert f"kept deploy bucket {deploy_bucket}: stack(s) {', '.join(others)} still use it" in notes
    else:
        assert deploy_bucket not in buckets and f"deleted deploy bucket {deploy_bucket}" in notes
    assert emulator_fixups.fixup_secret_arns(STACK) == []
    assert out["SearchUserPoolId"] not in {p["Id"] for p in idp.list_user_pools(MaxResults=60)["UserPools"]}
    assert not [s for s in aws.client("sns").list_subscriptions()["Subscriptions"]
                if s["TopicArn"] == out["ErrorTopicArn"]]
    functions = {f["FunctionName"] for f in aws.client("lambda").list_functions()["Functions"]}
    assert not functions & {out["PreLabelFunctionName"], out["PostLabelFunctionName"]}
    assert endpoint not in {e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]}
    roles = {r["Arn"] for r in aws.client("iam").list_roles()["Roles"]}
    assert not roles & {out["GroundTruthRoleArn"], out["SageMakerRoleArn"]}
    assert stack.destroy(STACK) == [f"stack {STACK} does not exist"]


def _item(table: str, pk: str) -> dict | None:
    got = aws.client("dynamodb").get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True)
    return got.get("Item")


def _ingestion_ends_in_the_table_the_thumbnails_and_the_dlq(out: dict, image) -> None:
    s3, bucket, table = aws.client("s3"), out["SearchIngestBucket"], out["SearchTableName"]
    buf = io.BytesIO()
    image.save_as(buf, enforce_file_format=True)
    study = str(image.StudyInstanceUID)
    report = {"StudyInstanceUID": study, "AccessionNumber": "ITEST-1",
              "text": "FINDINGS: Small right pleural effusion. No pneumothorax."}
    s3.put_object(Bucket=bucket, Key="incoming/chest.dcm", Body=buf.getvalue())
    s3.put_object(Bucket=bucket, Key="incoming/reports/itest.json", Body=json.dumps(report).encode())
    s3.put_object(Bucket=bucket, Key="incoming/not dicom.dcm", Body=b"this is not DICOM at all" * 10)
    pk = f"image#{image.SOPInstanceUID}"
    item = wait_for(pk, lambda: _item(table, pk), WAIT_S, 0.5)
    assert item["studyInstanceUID"]["S"] == study and item["modality"]["S"] == str(image.Modality)
    assert str(image.PatientName) and str(image.PatientName) not in json.dumps(item)  # no patient data
    assert str(image.PatientID) not in json.dumps(item)
    thumb = item["thumbnail"]["S"]
    assert thumb.startswith(out["SearchOutputUri"] + "thumbnails/") and thumb.endswith(".png")
    assert aws.read(thumb)[:8] == b"\x89PNG\r\n\x1a\n"
    rep = wait_for("the report item", lambda: _item(table, f"report#{study}"), WAIT_S, 0.5)
    assert rep["positiveCodes"]["SS"] == ["J90"] and rep["negativeCodes"]["SS"] == ["J93.9"]
    analysis = json.loads(aws.read(f"{out['SearchOutputUri']}reports/{study}.json"))
    assert analysis["AccessionNumber"] == "ITEST-1" and analysis["analysis"]["Entities"]
    sqs = aws.client("sqs")
    msgs = wait_for("the dead letter", lambda: sqs.receive_message(QueueUrl=out["SearchDeadLetterQueueUrl"],
                                                                  WaitTimeSeconds=1).get("Messages"), WAIT_S, 0.5)
    dead = json.loads(msgs[0]["Body"])
    assert dead["key"] == "incoming/not dicom.dcm" and "not a DICOM object" in dead["reason"], dead
    # the same object again: the same item and thumbnail (content-addressed), nothing added
    s3.put_object(Bucket=bucket, Key="incoming/chest-again.dcm", Body=buf.getvalue())
    wait_for("the second ingestion", lambda: _item(table, pk)["source"]["S"].endswith("chest-again.dcm"), WAIT_S,
             0.5)
    assert _item(table, pk)["thumbnail"]["S"] == thumb
    assert len(aws.list_keys(out["SearchOutputUri"] + "thumbnails/", ".png")) == 1
    # an embedding endpoint that is not there: the item and thumbnail are kept, the failure named in both
    settings = dataclasses.replace(runtime(), search_table=table, search_output_uri=out["SearchOutputUri"],
                                   search_endpoint="no-such-endpoint")
    with pytest.raises(ingest.IngestError, match="not embedded by no-such-endpoint: endpoint no-such-endpoint not"):
        ingest.ingest_object(bucket, "incoming/chest.dcm", settings, RuleEngine(), embed_timeout_s=5)
    kept = _item(table, pk)
    assert "no-such-endpoint" in kept["embeddingError"]["S"] and kept["thumbnail"]["S"] == thumb
    # the PACS's stable-study event: the study's image, read from the configured PACS, ends in the same item
    # (its source now its WADO-RS address) and the same content-addressed thumbnail; the event cannot name a PACS
    answer = _invoke(out["SearchIngestFunctionArn"], {"studyInstanceUID": study})
    assert answer["ingested"] == [pk] and answer["failed"] == [], answer
    from_pacs = _item(table, pk)
    assert from_pacs["source"]["S"] == (f"{out['PacsDicomwebUrl'].rstrip('/')}/studies/{study}/series/"
                                        f"{image.SeriesInstanceUID}/instances/{image.SOPInstanceUID}")
    assert from_pacs["thumbnail"]["S"] == thumb and "embedding" not in from_pacs
    refused = _invoke(out["SearchIngestFunctionArn"], {"studyInstanceUID": study, "pacs": "https://elsewhere.example"})
    assert "only its configured PACS" in refused["error"]
    assert "not a DICOM UID" in _invoke(out["SearchIngestFunctionArn"], {"studyInstanceUID": "1.2.x"})["error"]

"""Emulator-only fix-ups: apply, through the service APIs, what moto's CloudFormation skips.

Only used when ``AWS_ENDPOINT_URL`` points at an emulator; real CloudFormation applies all of
this itself. Everything is read from the template (resolved against the deployed stack), so the
template stays the one source of truth. moto 5.2.5 skips:

* ``AWS::S3::BucketPolicy`` -> ``put_bucket_policy``, minus statements conditioned on
  ``aws:SecureTransport``: moto *enforces* bucket policies and the emulator is plain HTTP on 127.0.0.1,
  so a TLS-only statement would deny every request (on AWS the template applies it unchanged);
* ``AWS::S3::Bucket`` ``PublicAccessBlockConfiguration`` -> ``put_public_access_block``, and
  ``NotificationConfiguration`` -> ``put_bucket_notification_configuration``;
* ``AWS::SNS::Subscription`` -> ``subscribe``;
* ``AWS::ApplicationAutoScaling::ScalableTarget`` / ``ScalingPolicy`` -> ``register_scalable_target`` /
  ``put_scaling_policy``, and a ``AWS::CloudWatch::Alarm`` whose ``AlarmActions`` name such a policy ->
  ``put_metric_alarm`` with the policy's ARN (the emulator honours them: it scales the async endpoint);
* ``AWS::SecretsManager::Secret`` (not created at all) -> ``create_secret`` named ``<stack>/<LogicalId>``
  with a value generated per ``GenerateSecretString``; the Lambda environment variables that referenced
  it (dropped by moto) are then set with ``update_function_configuration``, which also turns moto's
  numeric environment values back into strings;
* ``AWS::Cognito::UserPool`` / ``UserPoolClient`` / ``UserPoolGroup`` (not created at all) -> ``create_user_pool``
  (found again by its name; ``MfaConfiguration``/``EnabledMfas`` are left to AWS: moto's tokens skip MFA),
  ``create_user_pool_client`` (by ``ClientName``) and ``create_group``, so the search API's sign-in works locally.

Each fix-up returns a one-line description; ``dicomflow infra deploy`` prints them.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping
from typing import Any

from dicomflow import aws
from dicomflow.infra.errors import InfraError
from dicomflow.infra.template import Resolver

#: Where a secret the emulator did not create lives: ``<stack>/<LogicalId>``.
SECRET_NAME = "{stack}/{logical}"  # noqa: S105 - a name pattern



def stack_resources(stack: str) -> dict[str, dict[str, str]]:
    """``{logical id: {"type", "physical"}}`` of a deployed stack (entries moto leaves blank are skipped)."""
    cf = aws.client("cloudformation")
    out: dict[str, dict[str, str]] = {}
    for r in cf.describe_stack_resources(StackName=stack)["StackResources"]:
        if r.get("LogicalResourceId") and r.get("PhysicalResourceId"):
            out[r["LogicalResourceId"]] = {"type": r["ResourceType"], "physical": r["PhysicalResourceId"]}
    return out


def _get_att(logical: str, physical: str, attribute: str, types: Mapping[str, str]) -> Any:
    rtype = types.get(logical, "")
    if rtype == "AWS::S3::Bucket":
        return {"Arn": f"arn:aws:s3:::{physical}", "DomainName": f"{physical}.s3.amazonaws.com"}[attribute]
    if rtype == "AWS::IAM::Role" and attribute == "Arn":
        return aws.client("iam").get_role(RoleName=physical)["Role"]["Arn"]
    if rtype == "AWS::Lambda::Function" and attribute == "Arn":
        return aws.client("lambda").get_function_configuration(FunctionName=physical)["FunctionArn"]
    if rtype == "AWS::SQS::Queue" and attribute == "Arn":
        return aws.client("sqs").get_queue_attributes(QueueUrl=physical, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
    if rtype == "AWS::DynamoDB::Table" and attribute == "Arn":
        return aws.client("dynamodb").describe_table(TableName=physical)["Table"]["TableArn"]
    if physical.startswith("arn:"):
        if attribute == "Arn" or attribute.endswith("Arn"):
            return physical
        if attribute.endswith("Name"):
            return physical.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    if attribute.endswith("Name"):
        return physical
    raise InfraError(f"cannot resolve GetAtt {logical}.{attribute} on the emulator")


def resolver_for(stack: str, template: Mapping[str, Any], parameters: Mapping[str, str],
                 extra: Mapping[str, dict[str, str]] | None = None) -> Resolver:
    """A :class:`Resolver` over the deployed stack (plus ``extra`` resources created by fix-ups)."""
    cf = aws.client("cloudformation")
    desc = cf.describe_stacks(StackName=stack)["Stacks"][0]
    arn_parts = desc["StackId"].split(":")
    resources = {**stack_resources(stack), **(extra or {})}
    types = {k: v["type"] for k, v in resources.items()}
    pseudo = {"AWS::StackName": stack, "AWS::Region": arn_parts[3], "AWS::AccountId": arn_parts[4],
              "AWS::Partition": arn_parts[1], "AWS::URLSuffix": "amazonaws.com", "AWS::StackId": desc["StackId"]}
    return Resolver(template, parameters, {k: v["physical"] for k, v in resources.items()}, pseudo,
                    lambda lg, ph, at: _get_att(lg, ph, at, types))


def _generate(spec: Mapping[str, Any]) -> str:
    """A value as Secrets Manager's ``GenerateSecretString`` would make it (the common options)."""
    length = int(spec.get("PasswordLength", 32))
    alphabet = string.ascii_letters + string.digits
    if not spec.get("ExcludePunctuation"):
        alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
    alphabet = "".join(c for c in alphabet if c not in str(spec.get("ExcludeCharacters", "")))
    value = "".join(secrets.choice(alphabet) for _ in range(length))
    if "SecretStringTemplate" in spec:
        doc = json.loads(spec["SecretStringTemplate"])
        doc[spec.get("GenerateStringKey", "password")] = value
        return json.dumps(doc)
    return value


def _ensure_secrets(stack: str, template: Mapping[str, Any], resolver: Resolver,
                    deployed: Mapping[str, Any]) -> tuple[dict[str, dict[str, str]], list[str]]:
    sm = aws.client("secretsmanager")
    extra: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    for logical, res in template["Resources"].items():
        if res.get("Type") != "AWS::SecretsManager::Secret" or logical in deployed or not resolver.active(res):
            continue
        props = resolver.resolve(res.get("Properties") or {})
        name = props.get("Name") or SECRET_NAME.format(stack=stack, logical=logical)
        try:
            arn = sm.describe_secret(SecretId=name)["ARN"]
        except sm.exceptions.ResourceNotFoundException:
            value = props.get("SecretString") or _generate(props.get("GenerateSecretString") or {})
            arn = sm.create_secret(Name=name, Description=props.get("Description", ""), SecretString=value,
                                   Tags=[{"Key": "dicomflow:stack", "Value": stack},
                                         {"Key": "dicomflow:logical-id", "Value": logical}])["ARN"]
            notes.append(f"created secret {name} (moto's CloudFormation does not create AWS::SecretsManager::Secret)")
        extra[logical] = {"type": "AWS::SecretsManager::Secret", "physical": arn}
    return extra, notes


#: Properties of AWS::Cognito::UserPool passed to CreateUserPool as they are (the rest are AWS-only or renamed).
_POOL_PROPERTIES = ("Policies", "AdminCreateUserConfig", "AccountRecoverySetting", "UserPoolTags")


def _user_pool_resources(stack: str, template: Mapping[str, Any], parameters: Mapping[str, str],
                         extra: dict[str, dict[str, str]], create: bool) -> list[str]:
    """Find (and with ``create``, make) the template's user pools, app clients and groups; each found one is
    added to ``extra`` (pool -> its id, client -> its client id, group -> its name). One line per creation."""
    idp = aws.client("cognito-idp")
    notes: list[str] = []
    resources = template["Resources"]
    for wanted in ("AWS::Cognito::UserPool", "AWS::Cognito::UserPoolClient", "AWS::Cognito::UserPoolGroup"):
        resolver = resolver_for(stack, template, parameters, extra)
        for logical, res in resources.items():
            if res.get("Type") != wanted or not resolver.active(res):
                continue
            try:
                props = resolver.resolve(res.get("Properties") or {})
            except InfraError:  # its pool was not found
                continue
            if wanted == "AWS::Cognito::UserPool":
                name = props.get("UserPoolName") or f"{stack}-{logical}"
                pools = [p for page in idp.get_paginator("list_user_pools").paginate(MaxResults=60)
                         for p in page["UserPools"] if p["Name"] == name]
                physical = pools[0]["Id"] if pools else None
                if physical is None and create:
                    physical = idp.create_user_pool(PoolName=name, **{k: props[k] for k in _POOL_PROPERTIES
                                                                    if k in props})["UserPool"]["Id"]
                    notes.append(f"created user pool {name} (moto's CloudFormation does not create Cognito)")
            elif wanted == "AWS::Cognito::UserPoolClient":
                clients = [c for page in idp.get_paginator("list_user_pool_clients").paginate(
                    UserPoolId=props["UserPoolId"], MaxResults=60) for c in page["UserPoolClients"]
                    if c["ClientName"] == props.get("ClientName")]
                physical = clients[0]["ClientId"] if clients else None
                if physical is None and create:
                    physical = idp.create_user_pool_client(**props)["UserPoolClient"]["ClientId"]
                    notes.append(f"created app client {props.get('ClientName')} of user pool {props['UserPoolId']}")
            else:
                try:
                    physical = idp.get_group(GroupName=props["GroupName"], UserPoolId=props["UserPoolId"])[
                        "Group"]["GroupName"]
                except idp.exceptions.ResourceNotFoundException:
                    physical = None
                    if create:
                        physical = idp.create_group(**props)["Group"]["GroupName"]
                        notes.append(f"created group {physical} of user pool {props['UserPoolId']}")
            if physical:
                extra[logical] = {"type": wanted, "physical": physical}
    return notes


def created_resources(stack: str, template: Mapping[str, Any], parameters: Mapping[str, str]
                      ) -> dict[str, dict[str, str]]:
    """What the fix-ups created for ``stack`` (secrets, user pools ...) as ``{logical id: {"type", "physical"}}``,
    to resolve the outputs moto dropped."""
    extra: dict[str, dict[str, str]] = {}
    arns = fixup_secret_arns(stack)
    if arns:
        sm = aws.client("secretsmanager")
        for arn in arns:
            tags = {t["Key"]: t["Value"] for t in sm.describe_secret(SecretId=arn).get("Tags") or []}
            extra[tags["dicomflow:logical-id"]] = {"type": "AWS::SecretsManager::Secret", "physical": arn}
    _user_pool_resources(stack, template, parameters, extra, create=False)
    return extra


def fixup_secret_arns(stack: str) -> list[str]:
    """ARNs of the secrets the fix-ups created for ``stack`` (for destroy)."""
    sm = aws.client("secretsmanager")
    arns = []
    for page in sm.get_paginator("list_secrets").paginate():
        for s in page["SecretList"]:
            tags = {t["Key"]: t["Value"] for t in s.get("Tags") or []}
            if tags.get("dicomflow:stack") == stack:
                arns.append(s["ARN"])
    return arns


def _notification_api_shape(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's ``NotificationConfiguration`` -> the S3 API's shape."""
    def filt(item: Mapping[str, Any]) -> dict[str, Any]:
        rules = ((item.get("Filter") or {}).get("S3Key") or {}).get("Rules") or []
        return {"Filter": {"Key": {"FilterRules": rules}}} if rules else {}

    out: dict[str, Any] = {}
    for src, dst, arn_key, target in (("LambdaConfigurations", "LambdaFunctionConfigurations", "Function",
                                       "LambdaFunctionArn"),
                                      ("QueueConfigurations", "QueueConfigurations", "Queue", "QueueArn"),
                                      ("TopicConfigurations", "TopicConfigurations", "Topic", "TopicArn")):
        items = cfg.get(src) or []
        if items:
            out[dst] = [{target: i[arn_key], "Events": [i["Event"]], **filt(i)} for i in items]
    return out


def _targets(items: Any) -> list[tuple[str, tuple[str, ...]]]:
    """What a notification list sends where (target ARN, events), without the ids S3 adds."""
    out = []
    for item in items or []:
        target = next((v for k, v in item.items() if k.endswith("Arn")), "")
        out.append((target, tuple(sorted(item.get("Events") or []))))
    return sorted(out)


def apply_fixups(stack: str, template: Mapping[str, Any], parameters: Mapping[str, str],
                 quiet: bool = False) -> tuple[list[str], Resolver]:
    """Apply what the emulator skipped; returns (one line per change made, a resolver including created
    resources). Idempotent: what is already in place is left alone (and, with ``quiet``, not reported)."""
    deployed = stack_resources(stack)
    resolver = resolver_for(stack, template, parameters)
    extra, notes = _ensure_secrets(stack, template, resolver, deployed)
    notes.extend(_user_pool_resources(stack, template, parameters, extra, create=True))
    if extra:
        resolver = resolver_for(stack, template, parameters, extra)
    s3 = aws.client("s3")
    policies: dict[str, dict[str, str]] = {}
    for logical, res in template["Resources"].items():
        if not resolver.active(res):
            continue
        rtype = res.get("Type")
        props = res.get("Properties") or {}
        if rtype == "AWS::ApplicationAutoScaling::ScalableTarget":
            notes.extend(_scalable_target(resolver.resolve(props), quiet))
        elif rtype == "AWS::ApplicationAutoScaling::ScalingPolicy":
            arn, note = _scaling_policy(resolver.resolve(props), quiet)
            policies[logical] = {"type": rtype, "physical": arn}
            notes.extend(note)
        elif rtype == "AWS::CloudWatch::Alarm" and set(_refs(props.get("AlarmActions"))) & set(policies):
            with_policies = resolver_for(stack, template, parameters, {**extra, **policies})
            name = deployed.get(logical, {}).get("physical") or f"{stack}-{logical}"
            notes.extend(_alarm(name, with_policies.resolve(props), quiet))
        elif rtype == "AWS::S3::BucketPolicy":
            notes.extend(_bucket_policy(logical, resolver.resolve(props["Bucket"]),
                                        resolver.resolve(props["PolicyDocument"]), quiet))
        elif rtype == "AWS::S3::Bucket" and logical in deployed:
            bucket = deployed[logical]["physical"]
            if "PublicAccessBlockConfiguration" in props:
                wanted = resolver.resolve(props["PublicAccessBlockConfiguration"])
                try:
                    current = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
                except s3.exceptions.ClientError:
                    current = {}
                if current != wanted:
                    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=wanted)
                    notes.append(f"applied public access block to {bucket}")
            if "NotificationConfiguration" in props:
                wanted = _notification_api_shape(resolver.resolve(props["NotificationConfiguration"]))
                current = s3.get_bucket_notification_configuration(Bucket=bucket)
                if any(_targets(current.get(k)) != _targets(v) for k, v in wanted.items()):
                    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=wanted)
                    notes.append(f"applied event notifications to {bucket}")
        elif rtype == "AWS::SNS::Subscription":
            notes.extend(_subscribe(resolver.resolve(props)))
        elif rtype == "AWS::Lambda::Function" and logical in deployed:
            notes.extend(_lambda_environment(deployed[logical]["physical"], resolver.resolve(props)))
        elif rtype == "AWS::SageMaker::Model" and logical in deployed:
            notes.extend(_model_environment(deployed[logical]["physical"], resolver.resolve(props), deployed))
    return notes, resolver


def _refs(value: Any) -> list[str]:
    """Logical IDs named by ``Ref`` in a list of values."""
    return [v["Ref"] for v in value or [] if isinstance(v, Mapping) and isinstance(v.get("Ref"), str)]


def _scalable_target(props: Mapping[str, Any], quiet: bool) -> list[str]:
    scaling = aws.client("application-autoscaling")
    key = {"ServiceNamespace": props["ServiceNamespace"], "ResourceId": props["ResourceId"],
           "ScalableDimension": props["ScalableDimension"]}
    bounds = {"MinCapacity": int(props["MinCapacity"]), "MaxCapacity": int(props["MaxCapacity"])}
    current = scaling.describe_scalable_targets(ServiceNamespace=key["ServiceNamespace"],
                                                ResourceIds=[key["ResourceId"]],
                                                ScalableDimension=key["ScalableDimension"])["ScalableTargets"]
    if current and {k: current[0][k] for k in bounds} == bounds:
        return [] if quiet else [f"scalable target {key['ResourceId']} in place"]
    scaling.register_scalable_target(**key, **bounds)
    return [f"registered {key['ResourceId']} for autoscaling ({bounds['MinCapacity']}..{bounds['MaxCapacity']})"]


def _numbers(value: Any) -> Any:
    """Template numbers arrive as strings from parameters; the Application Auto Scaling API wants numbers."""
    if isinstance(value, Mapping):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str):
        try:
            return int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _scaling_policy(props: Mapping[str, Any], quiet: bool) -> tuple[str, list[str]]:
    args = {k: props[k] for k in ("PolicyName", "PolicyType", "ServiceNamespace", "ResourceId", "ScalableDimension")}
    for config in ("TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration"):
        if config in props:
            args[config] = _numbers(props[config])
            if config == "TargetTrackingScalingPolicyConfiguration":
                spec = args[config].get("CustomizedMetricSpecification") or {}
                for dim in spec.get("Dimensions") or []:
                    dim["Value"] = str(dim["Value"])
    arn = aws.client("application-autoscaling").put_scaling_policy(**args)["PolicyARN"]
    return arn, [] if quiet else [f"scaling policy {args['PolicyName']} ({args['PolicyType']})"]


def _alarm(name: str, props: Mapping[str, Any], quiet: bool) -> list[str]:
    fields = ("AlarmDescription", "Namespace", "MetricName", "Dimensions", "Statistic", "Period",
              "EvaluationPeriods", "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
              "AlarmActions")
    args = {k: props[k] for k in fields if k in props}
    for k in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if k in args:
            args[k] = int(args[k])
    args["Threshold"] = float(args["Threshold"])
    aws.client("cloudwatch").put_metric_alarm(AlarmName=name, **args)
    return [] if quiet else [f"alarm {name} -> {', '.join(args.get('AlarmActions') or [])}"]


def _model_environment(model: str, props: Mapping[str, Any], deployed: Mapping[str, Any]) -> list[str]:
    """Re-create a Model whose container environment lost variables (moto drops those that reference a
    resource it did not create, such as the PACS secret). SageMaker has no UpdateModel: the Model is
    deleted and created again under the same name, and the stack's endpoints are updated in place so a
    serving process started from the old Model is replaced."""
    name = model.rsplit("/", 1)[-1]
    sm = aws.client("sagemaker")
    current = sm.describe_model(ModelName=name)
    container = dict(current.get("PrimaryContainer") or {})
    wanted = {k: str(v) for k, v in ((props.get("PrimaryContainer") or {}).get("Environment") or {}).items()}
    actual = {k: str(v) for k, v in (container.get("Environment") or {}).items()}
    if actual == wanted:
        return []
    container["Environment"] = wanted
    sm.delete_model(ModelName=name)
    sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=current["ExecutionRoleArn"])
    for res in deployed.values():
        if res["type"] == "AWS::SageMaker::Endpoint":
            endpoint = res["physical"].rsplit("/", 1)[-1]
            config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config)
    missing = sorted(set(wanted) - set(actual))
    return [f"set environment of Model {name} ({'added ' + ', '.join(missing) if missing else 'values'})"]


def _bucket_policy(logical: str, bucket: str, document: Mapping[str, Any], quiet: bool = False) -> list[str]:
    """Apply a bucket policy minus its TLS-only statements: moto enforces bucket policies and the emulator
    speaks plain HTTP on 127.0.0.1, so ``aws:SecureTransport = false`` would deny every request."""
    statements = document.get("Statement") or []
    statements = [statements] if isinstance(statements, dict) else list(statements)
    kept = [s for s in statements if "aws:SecureTransport" not in json.dumps(s.get("Condition") or {})]
    dropped = len(statements) - len(kept)
    why = f" ({dropped} TLS-only statement(s) left out: the emulator is plain HTTP)" if dropped else ""
    if not kept:
        return [] if quiet else [f"bucket policy {logical} not applied to {bucket}{why}"]
    s3 = aws.client("s3")
    policy = {**document, "Statement": kept}
    try:
        if json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == policy:
            return []
    except s3.exceptions.ClientError:
        pass
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    return [f"applied bucket policy {logical} to {bucket}{why}"]


def _subscribe(props: Mapping[str, Any]) -> list[str]:
    sns = aws.client("sns")
    topic, protocol, endpoint = props["TopicArn"], props["Protocol"], props["Endpoint"]
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic):
        if any(s["Protocol"] == protocol and s["Endpoint"] == endpoint for s in page["Subscriptions"]):
            return []
    sns.subscribe(TopicArn=topic, Protocol=protocol, Endpoint=endpoint)
    return [f"subscribed a {protocol} endpoint to {topic.rsplit(':', 1)[-1]}"]


def _lambda_environment(function: str, props: Mapping[str, Any]) -> list[str]:
    wanted = {k: str(v) for k, v in ((props.get("Environment") or {}).get("Variables") or {}).items()}
    lam = aws.client("lambda")
    actual = (lam.get_function_configuration(FunctionName=function).get("Environment") or {}).get("Variables") or {}
    if {k: str(v) for k, v in actual.items()} == wanted and all(isinstance(v, str) for v in actual.values()):
        return []
    lam.update_function_configuration(FunctionName=function, Environment={"Variables": wanted})
    missing = sorted(set(wanted) - set(actual))
    why = f"added {', '.join(missing)}" if missing else "values as strings"
    return [f"set environment of Lambda {function} ({why})"]


def remove_fixups(stack: str) -> list[str]:
    """Undo what :func:`apply_fixups` created outside the stack (secrets, user pools tagged with the stack)."""
    notes = []
    sm = aws.client("secretsmanager")
    for arn in fixup_secret_arns(stack):
        sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
        notes.append(f"deleted secret {arn.rsplit(':', 1)[-1]}")
    idp = aws.client("cognito-idp")
    for page in idp.get_paginator("list_user_pools").paginate(MaxResults=60):
        for pool in page["UserPools"]:
            tags = idp.describe_user_pool(UserPoolId=pool["Id"])["UserPool"].get("UserPoolTags") or {}
            if tags.get("dicomflow:stack") == stack:
                idp.delete_user_pool(UserPoolId=pool["Id"])
                notes.append(f"deleted user pool {pool['Name']} (its users too)")
    return notes


def unsubscribe_topics(topic_arns: list[str]) -> list[str]:
    """Remove subscriptions on the stack's topics (moto keeps them when a topic is deleted)."""
    sns = aws.client("sns")
    notes = []
    for topic in topic_arns:
        try:
            pages = list(sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic))
        except sns.exceptions.NotFoundException:
            continue
        for page in pages:
            for sub in page["Subscriptions"]:
                if sub["SubscriptionArn"].startswith("arn:"):
                    sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
                    notes.append(f"removed a {sub['Protocol']} subscription from {topic.rsplit(':', 1)[-1]}")
    return notes

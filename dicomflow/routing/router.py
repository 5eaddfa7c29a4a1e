"""The router: a "study stable" event -> the rules -> one inference per matching (series, rule), exactly once.

Event: ``{"studyInstanceUID": UID}`` (plus ``"retry": true`` to try again what failed, ``"force": true`` to
analyse again what was done). The study is read from the *configured* PACS only (its credentials from
its secret): an event cannot name another PACS. For each series of the study, from QIDO-RS and one
instance's metadata:

* the system's own results are never routed: a series whose SOP class is an SR, a SEG or an
  encapsulated PDF, or whose Manufacturer is dicomflow's marker;
* each rule that matches (:mod:`dicomflow.routing.rules`) is one analysis, keyed by study, series and
  endpoint (and target model), with the model version the endpoint serves now. The key is written to the
  routing table (DynamoDB) with a condition, so a second event for the same study does nothing and two
  routers racing analyse once; a new model version on the endpoint analyses the study again;
* the analysis is an ``InvokeEndpointAsync`` with the study JSON (or ``InvokeEndpoint`` on a real-time or
  multi-model endpoint), tried ``DICOMFLOW_ROUTING_ATTEMPTS`` times with backoff (1 s, 2 s, ...) while
  the endpoint or the PACS is unavailable; then it is ``failed`` with the reason, and a message goes to
  the dead-letter queue. Nothing is dropped: :func:`status` shows every analysis, ``retry`` tries the
  failed ones again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.config import runtime
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.dicom.elements import NON_IMAGE_MODALITIES, is_result
from dicomflow.dicom.uid import stable_study_uid
from dicomflow.errors import DicomflowError
from dicomflow.routing.rules import Rule, Rules, SeriesInfo, load_rules, parse_rules

log = logging.getLogger("dicomflow.router")

PENDING, INVOKED, DONE, FAILED = "pending", "invoked", "done", "failed"


class RoutingError(DicomflowError):
    """The event or the router's configuration is wrong; the message says how to fix it."""


@dataclass
class Analysis:
    key: str
    rule: Rule
    series: SeriesInfo
    model: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- configuration ------------------------------------------------------------------------------

_rules_cache: dict[str, tuple[str, Rules]] = {}


def rules() -> Rules:
    """The rules named by ``DICOMFLOW_ROUTING_RULES`` (an s3:// object, re-read when its ETag changes, or a file)."""
    where = runtime().routing_rules
    if not where:
        raise RoutingError("no routing rules: set DICOMFLOW_ROUTING_RULES to the rules file (s3://... or a path)")
    if not where.startswith("s3://"):
        return load_rules(where)
    bucket, key = aws.parse_s3_uri(where)
    s3 = aws.client("s3")
    try:
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
        cached = _rules_cache.get(where)
        if cached and cached[0] == etag:
            return cached[1]
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    except ClientError as exc:
        raise RoutingError(f"cannot read the routing rules {where}: {exc.response.get('Error', {}).get('Code')}") \
            from None
    parsed = parse_rules(text, where)
    _rules_cache[where] = (etag, parsed)
    return parsed


def _table(table: str | None = None) -> str:
    table = table or runtime().routing_table
    if not table:
        raise RoutingError("no routing table: set DICOMFLOW_ROUTING_TABLE to the DynamoDB table of the stack")
    return table


# ---- the study ----------------------------------------------------------------------------------

def study_series(client: Any, study_uid: str) -> list[SeriesInfo]:
    """What the rules need of each series of the study."""
    out = []
    for row in dicomweb.search_series(client, study_uid, fields=["BodyPartExamined", "SeriesDescription",
                                                                 "NumberOfSeriesRelatedInstances"]):
        series_uid = dj.text(row, "SeriesInstanceUID")
        first = dicomweb.search_instances(client, study_uid, series_uid, limit=1)
        meta: dict[str, Any] = {}
        if first:
            meta = dicomweb.retrieve_metadata(client, study_uid, series_uid, dj.text(first[0], "SOPInstanceUID"))[0]
        out.append(SeriesInfo(
            study_uid=study_uid, series_uid=series_uid, modality=dj.text(row, "Modality"),
            body_part=dj.text(row, "BodyPartExamined") or dj.text(meta, "BodyPartExamined"),
            description=dj.text(row, "SeriesDescription") or dj.text(meta, "SeriesDescription"),
            image_type=tuple(str(v) for v in dj.values(meta, "ImageType")),
            slices=int(dj.value(row, "NumberOfSeriesRelatedInstances", 0) or 0),
            sop_class=dj.text(meta, "SOPClassUID"), manufacturer=dj.text(meta, "Manufacturer")))
    return out


def is_own_result(s: SeriesInfo) -> bool:
    return is_result(s.sop_class, s.manufacturer)


def model_version(endpoint: str, target: str | None) -> str:
    """What the endpoint serves now: ``<registered name>:<version>``, else its Model's name (plus the target)."""
    sm = aws.client("sagemaker")
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
        model = config["ProductionVariants"][0]["ModelName"]
        env = (sm.describe_model(ModelName=model).get("PrimaryContainer") or {}).get("Environment") or {}
    except ClientError as exc:
        raise EndpointMissing(f"endpoint {endpoint}: {exc.response.get('Error', {}).get('Message')}") from None
    from dicomflow.inference.endpoint import MODEL_NAME_ENV, MODEL_VERSION_ENV

    name = f"{env[MODEL_NAME_ENV]}:{env.get(MODEL_VERSION_ENV, '?')}" if env.get(MODEL_NAME_ENV) else model
    return f"{name}/{target}" if target else name


class EndpointMissing(RoutingError):
    """The rule's endpoint does not exist (yet): retried, then dead-lettered."""


# ---- the ledger (DynamoDB) ----------------------------------------------------------------------

def claim(key: str, record: dict[str, Any], again: tuple[str, ...]) -> bool:
    """Write the analysis as pending unless it exists for the same model in a status not in ``again``;
    True if this call owns it (a new model version owns it again)."""
    db = aws.client("dynamodb")
    conditions = ["attribute_not_exists(#k)", "#m <> :model"] + [f"#s = :s{i}" for i in range(len(again))]
    values = {":model": {"S": record["model"]}, **{f":s{i}": {"S": s} for i, s in enumerate(again)}}
    names = {"#k": "key", "#m": "model", **({"#s": "status"} if again else {})}
    try:
        item = aws.dynamodb_item({**record, "key": key, "status": PENDING, "updatedAt": _now()})
        db.put_item(TableName=_table(), Item=item, ConditionExpression=" OR ".join(conditions),
                    ExpressionAttributeValues=values, ExpressionAttributeNames=names)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True


def update(key: str, table: str | None = None, **fields: Any) -> None:
    fields["updatedAt"] = _now()
    names = {f"#f{i}": k for i, k in enumerate(fields)}
    values = {f":v{i}": aws.dynamodb_item({"x": v})["x"] for i, v in enumerate(fields.values())}
    assignments = ", ".join(f"#f{i} = :v{i}" for i in range(len(fields)))
    aws.client("dynamodb").update_item(
        TableName=_table(table), Key={"key": {"S": key}}, ExpressionAttributeNames=names,
        ExpressionAttributeValues=values, UpdateExpression=f"SET {assignments}")


def records(study_uid: str | None = None, table: str | None = None) -> list[dict[str, Any]]:
    """Every analysis in the table (of one study), newest first."""
    db = aws.client("dynamodb")
    args: dict[str, Any] = {"TableName": _table(table)}
    if study_uid:
        args.update(FilterExpression="#st = :st", ExpressionAttributeNames={"#st": "study"},
                    ExpressionAttributeValues={":st": {"S": study_uid}})
    rows = [aws.plain_item(i) for page in db.get_paginator("scan").paginate(**args) for i in page["Items"]]
    return sorted(rows, key=lambda r: r.get("updatedAt", ""), reverse=True)


def settle(record: dict[str, Any], table: str | None = None) -> dict[str, Any]:
    """An invoked async analysis becomes done or failed once its output or failure object exists."""
    if record.get("status") != INVOKED or not record.get("outputLocation"):
        return record
    if aws.read_bytes(record["outputLocation"]) is not None:
        update(record["key"], table, status=DONE)
        return {**record, "status": DONE}
    failure = record.get("failureLocation")
    data = aws.read_bytes(failure) if failure else None
    if data is not None:
        try:
            reason = json.loads(data).get("message") or data[:300].decode(errors="replace")
        except (ValueError, AttributeError):
            reason = data[:300].decode(errors="replace")
        update(record["key"], table, status=FAILED, reason=f"the model failed: {reason}"[:1000])
        return {**record, "status": FAILED, "reason": reason}
    return record


# ---- routing ------------------------------------------------------------------------------------

def _request(a: Analysis) -> dict[str, Any]:
    from dicomflow.inference.request import parse_request

    body: dict[str, Any] = {"studyInstanceUID": a.series.study_uid, "seriesInstanceUID": a.series.series_uid,
                            "outputs": list(a.rule.outputs), "storeToPacs": True}
    conn = runtime()
    if conn.pacs_url:
        body["dicomweb"] = {"url": conn.pacs_url, **({"auth": {"secretArn": conn.pacs_secret_arn}}
                                                     if conn.pacs_secret_arn else {})}
    return parse_request(body).as_dict()


def _invoke(a: Analysis) -> dict[str, Any]:
    """Start the analysis; the fields to record (raises on failure)."""
    from dicomflow.inference import endpoint as ep

    config = ep.async_config(a.rule.endpoint)
    body = _request(a)
    if config is not None:
        inv = ep.invoke_async(a.rule.endpoint, body, config)
        return {"status": INVOKED, "inferenceId": inv.inference_id, "outputLocation": inv.output_location,
                "failureLocation": inv.failure_location}
    result = ep.invoke_realtime(a.rule.endpoint, body, a.rule.target_model)
    outputs = {k: v.get("SOPInstanceUID") for k, v in (result.get("outputs") or {}).items()}
    return {"status": DONE, "outputs": json.dumps(outputs)}


def _dead_letter(event: dict[str, Any], a: Analysis, reason: str) -> None:
    queue = runtime().routing_dlq
    if not queue:
        log.error("no dead-letter queue configured (DICOMFLOW_ROUTING_DLQ); %s stays failed in the table", a.key)
        return
    aws.client("sqs").send_message(QueueUrl=queue, MessageBody=json.dumps(
        {"event": event, "key": a.key, "rule": a.rule.name, "endpoint": a.rule.endpoint, "reason": reason}))


def _attempt(event: dict[str, Any], a: Analysis) -> dict[str, Any]:
    attempts = runtime().routing_attempts
    reason = ""
    for n in range(1, attempts + 1):
        try:
            fields = _invoke(a)
            update(a.key, attempts=n, **fields)
            log.info("routed %s series %s to %s (%s)", a.series.study_uid, a.series.series_uid, a.rule.endpoint,
                     fields["status"])
            return {"key": a.key, "rule": a.rule.name, "endpoint": a.rule.endpoint, **fields}
        except (DicomflowError, ClientError) as exc:
            reason = str(exc)[:1000]
            log.warning("routing %s to %s failed (attempt %d of %d): %s", a.key, a.rule.endpoint, n, attempts,
                        reason[:300])
            if n < attempts:
                time.sleep(min(2 ** (n - 1), 30))
    update(a.key, status=FAILED, attempts=attempts, reason=reason)
    _dead_letter(event, a, reason)
    return {"key": a.key, "rule": a.rule.name, "endpoint": a.rule.endpoint, "status": FAILED, "reason": reason}


def route(event: dict[str, Any], client: Any) -> dict[str, Any]:
    """Route one "study stable" event (see the module docstring); returns what was done, per analysis."""
    if not isinstance(event, dict):
        raise RoutingError("the event must be a JSON object with studyInstanceUID")
    try:
        study = stable_study_uid(event, "the router")
    except ValueError as exc:
        raise RoutingError(str(exc)) from None
    again = (FAILED,) if event.get("retry") else ()
    if event.get("force"):
        again = (FAILED, DONE, INVOKED, PENDING)
    table_rules = rules()
    skipped, started = [], []
    for series in study_series(client, study):
        if is_own_result(series):
            skipped.append({"series": series.series_uid, "why": "a result of this system (SR/SEG/PDF)"})
            continue
        if series.modality.upper() in NON_IMAGE_MODALITIES:
            skipped.append({"series": series.series_uid, "why": f"no image to analyse ({series.modality})"})
            continue
        matched = table_rules.for_series(series)
        if not matched:
            skipped.append({"series": series.series_uid, "why": "no rule matches"})
        for rule in matched:
            try:
                model = model_version(rule.endpoint, rule.target_model)
            except EndpointMissing:
                model = "?"  # tried (and dead-lettered) below; a retry once it exists records the model
            key = "|".join([study, series.series_uid, rule.endpoint, rule.target_model or ""])
            a = Analysis(key, rule, series, model)
            record = {"study": study, "series": series.series_uid, "rule": rule.name, "endpoint": rule.endpoint,
                      "model": model, "receivedAt": _now()}
            if not claim(key, record, again):
                skipped.append({"series": series.series_uid, "rule": rule.name, "why": "analysed already"})
                continue
            started.append(_attempt(event, a))
    return {"studyInstanceUID": study, "analyses": started, "skipped": skipped}

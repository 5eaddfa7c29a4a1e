"""Auto-routing latency: from the last instance of a series stored by C-STORE to its SR stored in the PACS.

Starts its own local cloud, serves an untrained segmentation3d model behind an async endpoint, creates the
router Lambda (``lambdas/router`` as ``dicomflow infra package`` builds it) with its table and rules, and runs
the stable-study feed (:mod:`dicomflow.routing.feed`, polling every 0.2 s) in this process. For each of
``--repeats`` synthetic 16-slice MR series it prints, median (min-max) in seconds:

* ``routed``: the last instance stored (``storescu`` returns) -> the SR in the PACS (QIDO-RS every 50 ms);
* ``floor``: Orthanc's ``StableAge`` (2 s here) plus the async end-to-end time of the same request made
  directly (``invoke_endpoint_async`` -> the SR in the PACS), measured on another series of the same shape;
* ``overhead``: routed minus the floor: the feed's poll, the router's study reads, rule check and ledger
  write. The target is ``overhead <= 1 s``.

Run: ``.venv/bin/python bench/bench_routing.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from _cloud import REPO, private_cloud
from _stats import Sample, check_repeats, table

STABLE_AGE_S = 2.0


def _sr_stored(client, study: str, timeout_s: float = 120) -> float:
    from dicomflow.dicom import dicomweb
    from dicomflow.dicom import json as dj

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(dj.text(s, "Modality") == "SR" for s in dicomweb.search_series(client, study)):
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"no SR in study {study} after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    repeats = check_repeats(args.repeats)
    with private_cloud() as cloud:
        from model_helpers import model_tarball, untrained_artifact

        from dicomflow import aws
        from dicomflow.credentials import pacs_connection
        from dicomflow.demo import synthetic
        from dicomflow.dicom import dicomweb, dimse
        from dicomflow.dicom.orthanc import OrthancRest
        from dicomflow.emulator.cloud.orthanc import AE_TITLE
        from dicomflow.emulator.moto.endpoints import register_image
        from dicomflow.inference import endpoint as ep
        from dicomflow.infra import package
        from dicomflow.routing.feed import StableStudyFeed

        pacs = pacs_connection()
        client = dicomweb.connect(pacs)
        register_image(cloud.home, "dicomflow-bench-routing",
                       {"command": ["python", "-m", "inference_container.serve"], "cwd": str(REPO)})
        aws.client("s3").create_bucket(Bucket="bench-routing")
        model = "s3://bench-routing/model.tar.gz"
        aws.write(model, model_tarball(untrained_artifact(cloud.home / "m", "segmentation3d",
                                                          ["anterior", "posterior"], [16, 24, 16])))
        secret = aws.client("secretsmanager").create_secret(Name="bench-pacs", SecretString=json.dumps(
            {"username": pacs.username, "password": pacs.password, "url": pacs.url}))["ARN"]
        ep.deploy("bench-hippo", model, image="dicomflow-bench-routing:latest",
                  environment={"DICOMFLOW_PACS_SECRET_ARN": secret})
        # the directly invoked series (the floor) are renamed so that no rule routes them as well
        aws.write("s3://bench-routing/rules.yaml", b"version: 1\nrules:\n  - name: hippo\n    endpoint: bench-hippo\n"
                                                  b"    outputs: [json, sr]\n"
                                                  b"    match: {modality: MR, seriesDescription: 'Synthetic.*'}\n")
        aws.client("dynamodb").create_table(TableName="bench-routing", BillingMode="PAY_PER_REQUEST",
                                            AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
                                            KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}])
        role = aws.client("iam").create_role(RoleName="bench-router", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        aws.client("lambda").create_function(
            FunctionName="bench-router", Runtime="python3.11", Role=role, Handler="handler.lambda_handler",
            Timeout=120, Code={"ZipFile": package.build(REPO / "lambdas" / "router").data},
            Environment={"Variables": {"DICOMFLOW_PACS_URL": pacs.url, "DICOMFLOW_PACS_SECRET_ARN": secret,
                                       "DICOMFLOW_ROUTING_RULES": "s3://bench-routing/rules.yaml",
                                       "DICOMFLOW_ROUTING_TABLE": "bench-routing"}})
        feed = StableStudyFeed(OrthancRest(pacs), ["bench-router"], cloud.home / "changes.json")
        feed.skip_to_now()
        stop = threading.Event()
        threading.Thread(target=feed.run, args=(stop, 0.2), daemon=True).start()
        settings = cloud.settings
        routed, direct = [], []
        series = synthetic.hippocampus_series(2 * (repeats + 1), seed=5, shape=(16, 24, 20))
        for i in range(repeats + 1):  # the first of each warms the endpoint and the Lambda up
            s = series[2 * i]
            dimse.send(s.datasets, settings.host, settings.orthanc_dicom_port, settings.modality_aet, AE_TITLE,
                       cloud.home)
            stored = time.monotonic()
            routed.append(_sr_stored(client, s.study_uid) - stored)
            d = series[2 * i + 1]
            for ds in d.datasets:
                ds.SeriesDescription = "direct"
            dicomweb.store(client, d.datasets)
            t0 = time.monotonic()
            ep.invoke_async("bench-hippo", {"studyInstanceUID": d.study_uid, "outputs": ["json", "sr"],
                                            "storeToPacs": True})
            direct.append(_sr_stored(client, d.study_uid) - t0)
        stop.set()
        r, f = Sample(tuple(routed[1:])), Sample(tuple(x + STABLE_AGE_S for x in direct[1:]))
        over = Sample(tuple(a - b for a, b in zip(r.values, f.values, strict=True)))
        print(f"\n16-slice MR series, last instance stored -> SR stored (s), {repeats} series each")
        print(table(["what", "s median (min-max)"], [["routed (feed -> router -> async endpoint)", r.text(2)],
                                                     ["floor: StableAge + direct async e2e", f.text(2)],
                                                     ["overhead (target <= 1 s)", over.text(2)]]))


if __name__ == "__main__":
    main()

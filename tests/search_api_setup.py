"""A signed-in search API for tests: user pools, app clients, groups and users in the emulated Cognito, real
embedded report and image indexes with PNG thumbnails in the emulated S3, and the local search server over
them (in this process), with or without the built page."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dicomflow import aws
from dicomflow.api.engine import Engine
from dicomflow.api.users import add_user
from dicomflow.config import Settings
from dicomflow.emulator.search_api.server import SearchServer, SignIn
from dicomflow.search.report_index import ReportIndex
from dicomflow.search.reports import RuleEngine
from dicomflow.search.vectors import ImageVector, VectorIndex
from dicomflow.webserver import ServerThread

UID = "1.2.826.0.1.3680043.8.498.77{}"
REPORTS = [
    "FINDINGS: Small right pleural effusion. No pneumothorax. IMPRESSION: Effusion.",
    "FINDINGS: No pleural effusion. Cardiomegaly. IMPRESSION: Enlarged heart.",
    "FINDINGS: Possible small left effusion. Lungs otherwise clear.",
    "FINDINGS: Clear lungs. No acute disease.",
]
BUCKET = "dicomflow-search-api-tests"


def png(shade: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) // 16 + shade).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def seeded_pools(prefix: str) -> Iterator[dict[str, Any]]:
    """Two pools (ours and another), two clients of ours, a radiologist ``dr-rad`` and a researcher ``ms-res``."""
    idp = aws.client("cognito-idp")

    def pool(name: str) -> str:
        return idp.create_user_pool(PoolName=name, AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},
                                    Policies={"PasswordPolicy": {"MinimumLength": 12}})["UserPool"]["Id"]

    def client(pool_id: str, name: str) -> str:
        return idp.create_user_pool_client(UserPoolId=pool_id, ClientName=name, GenerateSecret=False,
                                           ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"])["UserPoolClient"]["ClientId"]

    ours, other = pool(prefix), pool(f"{prefix}-other")
    try:
        for p in (ours, other):
            for group in ("radiologist", "researcher"):
                idp.create_group(UserPoolId=p, GroupName=group)
        found = {"pool": ours, "client": client(ours, "search-page"), "other_client": client(ours, "another-app"),
                 "other_pool": other, "other_pool_client": client(other, "search-page")}
        found["passwords"] = {"dr-rad": add_user(ours, "dr-rad", "radiologist"),
                              "ms-res": add_user(ours, "ms-res", "researcher")}
        add_user(other, "dr-rad", "radiologist", found["passwords"]["dr-rad"])
        yield found
    finally:
        for p in (ours, other):
            idp.delete_user_pool(UserPoolId=p)


def seeded_indexes(where: Path) -> Path:
    """The report index of :data:`REPORTS` (studies ``UID.format(100 + n)`` of 2026-01-0<n+1>) and 8 images,
    two per study, with random 16-d vectors; odd images are labelled Edema; each has its own thumbnail in
    :data:`BUCKET`."""
    s3 = aws.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    engine = RuleEngine()
    with ReportIndex.open(where / "reports.sqlite") as reports:
        for n, text in enumerate(REPORTS):
            reports.add(UID.format(100 + n), text, engine.infer_icd10cm(text), accession=f"A-{n}",
                        study_date=f"2026-01-0{n + 1}")
    rng = np.random.default_rng(5)
    items = []
    for n in range(8):
        key = f"search/thumbnails/{n}.png"
        s3.put_object(Bucket=BUCKET, Key=key, Body=png(n * 20), ContentType="image/png")
        items.append(ImageVector(sop_uid=UID.format(200 + n), study_uid=UID.format(100 + n // 2),
                                 vector=rng.standard_normal(16).astype(np.float32), modality="DX",
                                 labels=("Edema",) if n % 2 else (), thumbnail=f"s3://{BUCKET}/{key}"))
    with VectorIndex.open(where / "images", model={"name": "chest", "version": "3"}, dimensions=16) as images:
        images.add(items)
    return where


def sign_in_page(page: Any, url: str, user: str, password: str) -> None:
    """Sign in on the search page at ``url`` (a playwright page) with the keyboard, as a person would."""
    page.goto(url.rstrip("/") + "/")
    page.wait_for_selector("#signin-submit:not([disabled])")
    page.fill("#username", user)
    page.fill("#password", password)
    page.press("#password", "Enter")
    page.wait_for_selector("#whoami:not(:empty)")


@contextmanager
def serving(settings: Settings, pools: dict[str, Any], where: Path, page_dir: Path) -> Iterator[str]:
    """The local search server over ``where``'s indexes, signing in with ``pools``' pool; yields its URL."""
    engine = Engine(where / "reports.sqlite", where / "images")
    app = SearchServer(engine, lambda: SignIn(pools["pool"], pools["client"]), settings.aws_endpoint_url,
                       settings.region, page_dir=page_dir)
    thread = ServerThread(app.app()).start()
    try:
        yield thread.url
    finally:
        thread.stop()

"""Search API Lambda: AppSync's direct Lambda resolver for every ``Query`` field of dicomflow/api/schema.graphql.

Event and answer: :mod:`dicomflow.api.appsync`. The indexes are the configured ones (on AWS the OpenSearch
domain, ``DICOMFLOW_SEARCH_OPENSEARCH_URL``); thumbnails come back as presigned links that expire in minutes.
Each query writes one audit line (user, kind, argument names, count): never search words or patient data.
"""

from __future__ import annotations

import logging
from typing import Any

from dicomflow.api.appsync import handle
from dicomflow.api.engine import Engine

logging.getLogger("dicomflow.audit").setLevel(logging.INFO)
if not logging.getLogger().handlers:  # outside the Lambda runtime (local host execution)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

_engine: Engine | None = None


def lambda_handler(event: Any, context: Any) -> Any:
    global _engine
    if _engine is None:
        _engine = Engine.from_runtime()
    return handle(event, _engine)

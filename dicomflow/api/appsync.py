"""The search API behind AppSync: a direct Lambda resolver event -> the same resolvers as the local server.

AppSync has checked the Cognito token and the arguments against ``schema.graphql`` before the Lambda runs;
the event (one field, no batching) is ``{"arguments": {...}, "identity": {"username", "groups", ...},
"info": {"parentTypeName": "Query", "fieldName": ...}}``. The answer is the field's value; an error is
raised, and AppSync returns it as a GraphQL error whose ``errorType`` is the exception's class
(``Forbidden``, ``BadQuery``, ``ReportIndexError``...) and whose message says what to change. The Lambda
runtime also writes a raised error's message to CloudWatch, so the values a message quotes (search words,
UIDs, codes) are taken out of it first (:func:`without_values`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dicomflow import safejson
from dicomflow.api import audit
from dicomflow.api.auth import Unauthorized, User
from dicomflow.api.engine import Engine
from dicomflow.api.resolvers import QUERIES, BadQuery
from dicomflow.errors import DicomflowError

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def without_values(message: str) -> str:
    """``message`` with what it quotes and any UID replaced by ``…``: it says what is wrong, not with what."""
    return _UID.sub("…", _QUOTED.sub("'…'", message))


def user_of(identity: Any) -> User:
    """The signed-in user AppSync verified (Cognito user pool identity)."""
    if not isinstance(identity, Mapping) or not isinstance(identity.get("username"), str):
        raise Unauthorized("the request has no Cognito user pool identity; the API needs AMAZON_COGNITO_USER_POOLS")
    groups = identity.get("groups") or []
    if not isinstance(groups, list):
        raise Unauthorized("the identity's groups are not a list")
    return User(identity["username"], tuple(str(g) for g in groups))


def handle(event: Any, engine: Engine) -> Any:
    """Resolve one AppSync direct-Lambda event with ``engine``'s indexes."""
    if not isinstance(event, Mapping):
        raise BadQuery("the event is not a JSON object; this Lambda is an AppSync direct resolver")
    info = event.get("info") if isinstance(event.get("info"), Mapping) else {}
    field = info.get("fieldName")
    if info.get("parentTypeName", "Query") != "Query" or field not in QUERIES:
        raise BadQuery(f"field {str(field)[:40]!r} of {str(info.get('parentTypeName'))[:40]} has no resolver here; "
                       f"resolvers: {', '.join(f'Query.{q}' for q in QUERIES)}")
    args = event.get("arguments") or {}
    if not isinstance(args, Mapping) or safejson.depth(args) > safejson.MAX_DEPTH:
        raise BadQuery("arguments must be a JSON object of the field's arguments")
    user = user_of(event.get("identity"))
    try:
        return audit.resolve(field, engine.context(user), dict(args))
    except DicomflowError as exc:
        raise type(exc)(without_values(str(exc))) from None

"""The search API's audit trail: one JSON log line per query field resolved (logger ``dicomflow.audit``).

A line names who asked (username and groups), what kind of query (the field), which arguments were given
(their names, never their values: search words and UIDs can identify a patient), how many results came back,
the outcome (``ok``, ``refused`` for a group rule, ``invalid`` for bad input, ``error``) and the time taken.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from dicomflow.api.auth import Forbidden
from dicomflow.api.resolvers import QUERIES, Context
from dicomflow.errors import DicomflowError

log = logging.getLogger("dicomflow.audit")


def count_of(result: Any) -> int | None:
    """How many results an answer carries: reports found, facets, neighbours, a study's images."""
    if isinstance(result, list):
        return len(result)
    if isinstance(result, Mapping):
        for key in ("total", "neighbours", "images"):
            value = result.get(key)
            if isinstance(value, int):
                return value
            if isinstance(value, list):
                return len(value)
    return None


def resolve(field: str, ctx: Context, args: Mapping[str, Any]) -> Any:
    """Run the resolver of query ``field`` for ``ctx``'s user and write its audit line, whatever the outcome."""
    started = time.perf_counter()
    outcome, result = "error", None
    try:
        result = QUERIES[field](ctx, **args)
        outcome = "ok"
        return result
    except Forbidden:
        outcome = "refused"
        raise
    except DicomflowError:
        outcome = "invalid"
        raise
    finally:
        log.info(json.dumps({
            "event": "search-api", "user": ctx.user.username, "groups": list(ctx.user.groups), "query": field,
            "arguments": sorted(k for k, v in args.items() if v is not None), "results": count_of(result),
            "outcome": outcome, "ms": round((time.perf_counter() - started) * 1000, 1)}, sort_keys=True))

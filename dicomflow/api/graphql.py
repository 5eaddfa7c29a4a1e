"""The search API's GraphQL execution: ``schema.graphql`` bound to :mod:`dicomflow.api.resolvers` (ariadne).

One :func:`execute` for every transport (the local HTTP server, an AppSync Lambda resolver's tests): a query
is parsed and validated against the schema, then refused before anything runs when it is too big
(:data:`MAX_QUERY_CHARS`), too deep (:data:`MAX_DEPTH` levels of selections, fragments followed) or too
costly (ariadne's cost validator: every field 1, list fields times their ``first``/``k``). Errors come back
as GraphQL errors with ``extensions.code``: ``BAD_USER_INPUT`` (the engine's message), ``FORBIDDEN`` (a
group rule), ``GRAPHQL_VALIDATION_FAILED``; never a traceback.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from ariadne import QueryType, graphql_sync, load_schema_from_path, make_executable_schema
from ariadne.utils import unwrap_graphql_error
from ariadne.validation import cost_validator
from graphql import GraphQLEnumType, GraphQLError, GraphQLSchema, ValidationRule
from graphql.language import FieldNode, FragmentSpreadNode, InlineFragmentNode, OperationDefinitionNode

from dicomflow.api import SCHEMA_FILE, audit, resolvers
from dicomflow.api.auth import Forbidden
from dicomflow.errors import DicomflowError

MAX_QUERY_CHARS = 10_000
MAX_DEPTH = 6
MAX_COST = 5_000
_LIST_ARGS = {"reports": ["first"], "facets": ["first"], "similarImages": ["k"]}


class DepthLimit(ValidationRule):
    """Refuse operations whose selections nest deeper than :data:`MAX_DEPTH` (through fragments too)."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        fragments = {f.name.value: f for f in self.context.document.definitions if hasattr(f, "type_condition")}

        def depth(selection_set: Any, level: int, seen: frozenset[str]) -> int:
            if selection_set is None:
                return level
            deepest = level
            for sel in selection_set.selections:
                if isinstance(sel, FieldNode):
                    deepest = max(deepest, depth(sel.selection_set, level + 1, seen))
                elif isinstance(sel, InlineFragmentNode):
                    deepest = max(deepest, depth(sel.selection_set, level, seen))
                elif isinstance(sel, FragmentSpreadNode) and sel.name.value not in seen:
                    frag = fragments.get(sel.name.value)
                    if frag is not None:
                        deepest = max(deepest, depth(frag.selection_set, level, seen | {sel.name.value}))
            return deepest

        found = depth(node.selection_set, 0, frozenset())
        if found > MAX_DEPTH:
            self.report_error(GraphQLError(f"the query nests {found} levels deep; at most {MAX_DEPTH}", node))


def _bind(name: str) -> Any:
    def resolve(_: Any, info: Any, **args: Any) -> Any:
        return audit.resolve(name, info.context, args)

    return resolve


@cache
def schema() -> GraphQLSchema:
    query = QueryType()
    for name in resolvers.QUERIES:
        query.set_field(name, _bind(name))
    built = make_executable_schema(load_schema_from_path(str(SCHEMA_FILE)), query)  # enum values: their names
    # ariadne 1.1.1 sets each enum's parse_value to a one-argument function, which graphql-core 3.2.14 calls
    # with two (every enum variable fails); our enums are plain names, so graphql-core's own is right
    for named in built.type_map.values():
        if isinstance(named, GraphQLEnumType) and "parse_value" in vars(named):
            del named.parse_value
    return built


class _BugsOnly(logging.LoggerAdapter):
    """ariadne's error log: a resolver's bug with its traceback; never a client's mistake (a refused argument,
    a group rule, a validation error) and never the request's text, which can name a patient."""

    def error(self, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        original = unwrap_graphql_error(exc_info) if isinstance(exc_info, BaseException) else None
        if original is None or original is exc_info or isinstance(original, DicomflowError):
            return
        self.logger.error("a search API resolver failed: %s", type(original).__name__, exc_info=original)


_ERROR_LOG = _BugsOnly(logging.getLogger("dicomflow.api"), {})


def _format_error(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    original = error.original_error
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        formatted["path"] = list(error.path)
    if isinstance(original, Forbidden):
        formatted["extensions"] = {"code": "FORBIDDEN"}
    elif isinstance(original, DicomflowError):
        formatted["extensions"] = {"code": "BAD_USER_INPUT"}
    elif original is not None:  # a bug: the message only, the traceback stays in the server's log
        formatted["message"] = "internal error; the server's log has the details"
        formatted["extensions"] = {"code": "INTERNAL_SERVER_ERROR"}
    else:
        formatted["extensions"] = {"code": "GRAPHQL_VALIDATION_FAILED"}
    return formatted


def execute(body: Any, context: resolvers.Context) -> tuple[bool, dict[str, Any]]:
    """Run one GraphQL request body (``{"query", "variables", "operationName"}``) for ``context``'s user;
    (success, the response document)."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return False, {"errors": [{"message": "send a JSON object with query (a GraphQL document) and optional "
                                              "variables", "extensions": {"code": "BAD_REQUEST"}}]}
    if len(body["query"]) > MAX_QUERY_CHARS:
        return False, {"errors": [{"message": f"the query has {len(body['query'])} characters; at most "
                                              f"{MAX_QUERY_CHARS}", "extensions": {"code": "BAD_REQUEST"}}]}
    cost = cost_validator(maximum_cost=MAX_COST, default_cost=1, default_complexity=1,
                          variables=body.get("variables") if isinstance(body.get("variables"), dict) else None,
                          cost_map={"Query": {name: {"complexity": 1, "multipliers": args}
                                              for name, args in _LIST_ARGS.items()}})
    return graphql_sync(schema(), body, context_value=context, validation_rules=[DepthLimit, cost],
                        error_formatter=_format_error, logger=_ERROR_LOG, introspection=False)

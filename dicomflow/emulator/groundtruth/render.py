"""Render a Ground Truth custom template with python-liquid and GT's filters, the way GT does.

GT HTML-escapes every output unless ``skip_encoding`` is applied; its extra filters are
``to_json``, ``escape`` (escape once), ``skip_encoding`` and ``grant_read_access`` (an ``s3://`` URI
becomes a presigned HTTPS GET URL). For the local portal :func:`localize` then swaps GT's
crowd-html-elements script for the local stand-in and adds the task's submit metadata.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from liquid import Environment, Markup
from liquid.exceptions import LiquidError

from dicomflow import aws
from dicomflow.errors import DicomflowError

CROWD_ELEMENTS_URL = "https://assets.crowd.aws/crowd-html-elements.js"
PRESIGN_SECONDS = 3600
_CROWD_SCRIPT = re.compile(r"<script[^>]*src=[\"']" + re.escape(CROWD_ELEMENTS_URL) + r"[\"'][^>]*>\s*</script>")


class TemplateError(DicomflowError):
    """The worker template does not parse or render."""


def _plain(value: Any) -> Any:
    """Liquid values back to JSON-able Python (Markup is a str subclass already)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(_plain(value), separators=(",", ":"))


def escape(value: Any) -> Markup:
    """HTML-escape once: a value already escaped (Markup) is left alone, so autoescape adds nothing."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def skip_encoding(value: Any) -> Markup:
    return Markup("" if value is None else str(value))


def make_grant_read_access(presign: Callable[[str], str] | None = None) -> Callable[[Any], str]:
    """``grant_read_access``: presign an ``s3://`` URI for GET; other URLs pass through."""

    def default(uri: str) -> str:
        return aws.presigned_get(uri, PRESIGN_SECONDS)

    fn = presign or default

    def grant_read_access(value: Any) -> str:
        text = "" if value is None else str(value)
        return fn(text) if text.startswith("s3://") else text

    return grant_read_access


def environment(presign: Callable[[str], str] | None = None) -> Environment:
    """A Liquid environment that behaves like GT's (autoescape on, GT's filters registered)."""
    env = Environment(autoescape=True)
    env.filters["to_json"] = to_json
    env.filters["escape"] = escape
    env.filters["skip_encoding"] = skip_encoding
    env.filters["grant_read_access"] = make_grant_read_access(presign)
    return env


class WorkerTemplate:
    """A parsed worker template; :meth:`render` takes the task input (pre-label's ``taskInput``)."""

    def __init__(self, source: str, env: Environment | None = None) -> None:
        self.env = env or environment()
        try:
            self.template = self.env.from_string(source)
        except LiquidError as exc:
            raise TemplateError(f"worker template does not parse: {exc}") from None

    def render(self, task_input: Mapping[str, Any], **variables: Any) -> str:
        try:
            return self.template.render(task={"input": dict(task_input)}, **variables)
        except LiquidError as exc:
            raise TemplateError(f"worker template failed to render: {exc}") from None


def localize(page: str, *, shim_url: str, submit_url: str, assignment_id: str, title: str) -> str:
    """Make a rendered GT page work in the local portal (crowd shim, submit target, title)."""
    shim = f'<script src="{html.escape(shim_url)}"></script>'
    page, n = _CROWD_SCRIPT.subn(shim, page, count=1)
    if n == 0:
        page = shim + page
    head = (
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        f'<meta name="dicomflow-submit-url" content="{html.escape(submit_url)}">'
        f'<meta name="dicomflow-assignment" content="{html.escape(assignment_id)}">'
        "<meta name=\"referrer\" content=\"no-referrer\">"
        "</head><body style=\"background:#111;color:#eee;margin:12px\">"
    )
    return head + page + "</body></html>"

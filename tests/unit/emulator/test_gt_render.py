"""Ground Truth's Liquid filters as the local portal renders them: ``to_json``, ``escape``, ``skip_encoding``,
``grant_read_access``, with GT's autoescaping of every other output."""

from __future__ import annotations

import html
import json

import pytest

from dicomflow.emulator.groundtruth.render import TemplateError, WorkerTemplate, environment, localize

TASK = {"labels": ["Edema", "No Finding"], "note": "<b>\"x\" & 'y'</b>",
        "instances": [{"url": "/wado?requestType=WADO&studyUID=1.2&sig=ab"}]}


def _render(source: str, task: dict | None = None, presign=None) -> str:
    return WorkerTemplate(source, environment(presign)).render(TASK if task is None else task)


def test_plain_output_is_html_escaped_like_ground_truth() -> None:
    out = _render("{{ task.input.note }}")
    assert html.unescape(out) == TASK["note"] and not set("<>\"'") & set(out)


def test_to_json_gives_json_and_is_then_autoescaped() -> None:
    out = _render("{{ task.input | to_json }}")
    assert "<b>" not in out and "\"" not in out
    assert json.loads(html.unescape(out)) == TASK  # round-trips through an HTML attribute


def test_to_json_escape_in_an_attribute_escapes_exactly_once() -> None:
    out = _render('<div data-task="{{ task.input | to_json | escape }}"></div>')
    value = out[len('<div data-task="'):-len('"></div>')]
    assert "&amp;amp;" not in value and "&amp;quot;" not in value  # not double-escaped
    assert json.loads(html.unescape(value)) == TASK


def test_escape_is_idempotent() -> None:
    once = _render("{{ task.input.note | escape }}")
    assert once == _render("{{ task.input.note | escape | escape }}")
    assert html.unescape(once) == TASK["note"] and not set("<>\"'") & set(once)


def test_skip_encoding_outputs_raw_html() -> None:
    assert _render("{{ task.input.note | skip_encoding }}") == TASK["note"]
    assert _render("{{ task.input.missing | skip_encoding }}") == ""


def test_grant_read_access_presigns_s3_uris_and_passes_other_urls() -> None:
    seen = []

    def presign(uri: str) -> str:
        seen.append(uri)
        return "https://bucket.s3.amazonaws.com/key?X-Amz-Signature=abc&X-Amz-Expires=3600"

    task = {"s3": "s3://bucket/key", "https": "https://example.org/a.png"}
    out = _render("{{ task.input.s3 | grant_read_access }}|{{ task.input.https | grant_read_access }}", task, presign)
    signed, other = out.split("|")
    assert seen == ["s3://bucket/key"]
    assert html.unescape(signed).startswith("https://bucket.s3.amazonaws.com/key?X-Amz-Signature=abc")
    assert "&amp;" in signed  # the URL is autoescaped in the page, as GT does
    assert other == "https://example.org/a.png"


def test_grant_read_access_default_presigns_with_s3(monkeypatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    url = html.unescape(_render("{{ task.input.s3 | grant_read_access }}", {"s3": "s3://my-bucket/a/b.dcm"}))
    assert "my-bucket" in url and "a/b.dcm" in url and "Signature" in url and url.startswith("https://")


def test_the_real_worker_template_renders_and_embeds_the_task() -> None:
    from dicomflow.groundtruth.submit import UI_TEMPLATE

    page = WorkerTemplate(UI_TEMPLATE.read_text()).render(TASK, viewer_base_url="/ui/")
    assert '<script type="module" src="/ui/viewer.js">' in page
    start = page.index('data-task="') + len('data-task="')
    assert json.loads(html.unescape(page[start:page.index('"', start)])) == TASK
    local = localize(page, shim_url="/static/crowd-shim.js", submit_url="/submit", assignment_id="a1", title="T")
    assert "assets.crowd.aws" not in local and '<script src="/static/crowd-shim.js"></script>' in local


def test_uploaded_template_default_viewer_base_yields_to_the_portal() -> None:
    from dicomflow.groundtruth.submit import UI_TEMPLATE, worker_template_for

    source = worker_template_for(UI_TEMPLATE.read_text(), "https://label.example.org/ui/")
    assert 'src="https://label.example.org/ui/viewer.js"' in WorkerTemplate(source).render(TASK)  # real GT
    assert 'src="/ui/viewer.js"' in WorkerTemplate(source).render(TASK, viewer_base_url="/ui/")  # local portal


def test_a_broken_template_is_one_clear_error() -> None:
    with pytest.raises(TemplateError, match="does not parse"):
        WorkerTemplate("{% if %}")

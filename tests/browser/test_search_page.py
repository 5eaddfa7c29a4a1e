"""The search page in real headless Chromium against the local search API: sign in with the emulated Cognito,
search "effusion", see the results with the denied mention marked, open a study, see similar images with their
thumbnails loaded from presigned links, sign out; a researcher cannot search words. The page never holds a PACS
or AWS credential, and keeps its token out of storage and cookies.

With ``DICOMFLOW_SCREENSHOT_DIR`` set, the screenshots the README shows are written there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from search_api_setup import UID, seeded_indexes, seeded_pools, serving, sign_in_page

from dicomflow.emulator.search_api.server import PAGE_DIR

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture(scope="module")
def page_url(local_cloud, tmp_path_factory):
    assert (PAGE_DIR / "index.html").is_file(), "the search page is not built: run 'make setup'"
    with seeded_pools("search-page-tests") as pools, \
            serving(local_cloud.settings, pools, seeded_indexes(tmp_path_factory.mktemp("page")), PAGE_DIR) as url:
        yield url, pools


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("DICOMFLOW_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["DICOMFLOW_SCREENSHOT_DIR"]) / name)


def test_a_radiologist_searches_opens_a_study_sees_similar_images_and_signs_out(browser, page_url, local_cloud,
                                                                                 tmp_path) -> None:
    url, pools = page_url
    browser.clear_cookies()  # the browser is the session's: earlier tests' sessions are not this page's
    page = browser.new_page()
    bodies: list[str] = []
    page.on("response", lambda r: bodies.append(r.text()) if r.request.resource_type in ("fetch", "xhr") else None)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url + "/")
        page.wait_for_selector("#signin-submit:not([disabled])")
        page.fill("#username", "dr-rad")
        page.fill("#password", "not-the-password")
        page.click("#signin-submit")
        page.wait_for_selector("#signin-error:not(:empty)")
        assert "password" in page.inner_text("#signin-error").lower()
        assert page.input_value("#password") == ""

        sign_in_page(page, url, "dr-rad", pools["passwords"]["dr-rad"])
        assert "dr-rad" in page.inner_text("#whoami") and "radiologist" in page.inner_text("#whoami")
        page.wait_for_selector("[data-testid=hit]")  # signed in, the page lists the newest reports
        page.fill("#search-text", "effusion")
        page.press("#search-text", "Enter")
        page.wait_for_function("""() => { const hits = [...document.querySelectorAll('[data-testid=hit]')];
                                         return hits.length === 3 && hits.every(h => h.querySelector('mark')); }""")
        hits = page.query_selector_all("[data-testid=hit]")
        assert {h.get_attribute("data-study") for h in hits} == {UID.format(100), UID.format(101), UID.format(102)}
        denied = page.query_selector(f'[data-testid=hit][data-study="{UID.format(101)}"] '
                                     '[data-testid=mention].negative')
        assert denied is not None and "effusion" in denied.inner_text().lower()
        assert page.query_selector(f'[data-testid=hit][data-study="{UID.format(102)}"] '
                                   '[data-testid=mention].uncertain') is not None
        assert page.query_selector("[data-testid=hit] mark") is not None  # the matched words
        assert page.query_selector_all("#facets [data-testid=facet]")
        assert page.query_selector("#facet-chart svg rect") is not None
        _shot(page, tmp_path, "search-page-results.png")
        page.fill("#search-since", "2026-01-02")  # a study-date range narrows the same search
        page.fill("#search-until", "2026-01-02")
        page.click("#search-submit")
        page.wait_for_function("() => document.querySelectorAll('[data-testid=hit]').length === 1")
        assert page.get_attribute("[data-testid=hit]", "data-study") == UID.format(101)
        assert "2026-01-02" in page.inner_text("[data-testid=hit]")

        page.click(f'[data-testid=hit][data-study="{UID.format(101)}"] a[data-testid=open-study]')
        page.wait_for_selector("#report-text [data-testid=mention].negative")
        assert "No pleural effusion" in page.inner_text("#report-text")
        page.wait_for_selector("#similar [data-testid=neighbour] img")
        page.wait_for_function("""() => [...document.querySelectorAll('#similar [data-testid=neighbour] img')]
                                   .every(i => i.complete && i.naturalWidth === 64)""")
        neighbours = page.query_selector_all("#similar [data-testid=neighbour]")
        assert len(neighbours) == 6  # every image of the other three studies, never this study's own
        assert UID.format(101) not in {n.get_attribute("data-study") for n in neighbours}
        _shot(page, tmp_path, "search-page-study.png")
        # the grid's filters: label Edema leaves the labelled images of the other studies; modality CR, none
        page.fill("#similar-label", "Edema")
        page.press("#similar-label", "Enter")
        page.wait_for_function("""() => {
            const n = [...document.querySelectorAll('#similar [data-testid=neighbour]')];
            return n.length === 3 && n.every(f => f.textContent.includes('Edema')); }""")
        page.select_option("#similar-modality", "CR")
        page.wait_for_selector("#similar.empty")
        assert "No similar images" in page.inner_text("#similar")

        # empty and error states: no report has the word; an empty date range is the API's clear refusal
        page.click("#back")
        page.fill("#search-text", "xylophone")
        page.press("#search-text", "Enter")
        page.wait_for_selector("#results .empty")
        assert "No reports match" in page.inner_text("#results")
        page.fill("#search-text", "effusion")
        page.fill("#search-since", "2026-01-03")
        page.fill("#search-until", "2026-01-01")
        page.press("#search-text", "Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert "is empty" in page.inner_text("#error")

        page.click("#signout")
        page.wait_for_selector("#signin-form", state="visible")
        assert page.inner_text("#whoami").strip() == "" and not page.query_selector_all("[data-testid=hit]")
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
        assert page.context.cookies() == []
        seen = "\n".join(bodies)
        assert local_cloud.pacs.password not in seen and "SecretAccessKey" not in seen
        assert "Content Security Policy" not in "\n".join(errors), errors
    finally:
        page.close()


def test_a_researcher_sees_codes_but_cannot_search_words(browser, page_url) -> None:
    url, pools = page_url
    page = browser.new_page()
    try:  # the demo's sign-in link fills in the username (never a password) and the page forgets the link
        page.goto(f"{url}/#/signin/ms-res")
        page.wait_for_selector("#signin-submit:not([disabled])")
        assert page.input_value("#username") == "ms-res"
        page.fill("#password", pools["passwords"]["ms-res"])
        page.press("#password", "Enter")
        page.wait_for_selector("#whoami:not(:empty)")
        assert page.evaluate("location.hash") == "#/"
        assert page.is_disabled("#search-text")
        page.click("#search-submit")
        page.wait_for_selector("[data-testid=hit]")
        assert page.query_selector("[data-testid=hit] mark") is None  # no report words for this group
        page.click(f'[data-testid=hit][data-study="{UID.format(100)}"] a[data-testid=open-study]')
        page.wait_for_selector("#report-text")
        page.wait_for_selector("#similar [data-testid=neighbour] img")
        assert "Small right pleural effusion" not in page.inner_text("#study")
    finally:
        page.close()

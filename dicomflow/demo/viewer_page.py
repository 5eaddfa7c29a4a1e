"""A study opened in the OHIF viewer as a person opens it: its sign-in link in headless Chromium (Debian's),
timed until the first image is drawn, then its SEG loaded (a double click on the SEG in the study browser, as a
radiologist does) and timed until the overlay's colours are drawn; the segmentation panel's structure names read
back. Colours are counted on the viewport's canvas: the MR is grey, so coloured pixels are the overlay's."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dicomflow.demo.annotators import CHROMIUM, CHROMIUM_ARGS, require_chromium
from dicomflow.errors import DicomflowError

#: [width, height, pixels brighter than black, pixels whose channels differ by more than 60 (not grey)]
_CANVAS = """() => { const c = document.querySelector('canvas.cornerstone-canvas');
  const g = c && c.getContext('2d'); if (!g || !c.width) return null;
  const d = g.getImageData(0, 0, c.width, c.height).data; let lit = 0, coloured = 0;
  for (let i = 0; i < d.length; i += 4) { const r = d[i], gr = d[i + 1], b = d[i + 2];
    if (r + gr + b > 30) lit++; if (Math.max(r, gr, b) - Math.min(r, gr, b) > 60) coloured++; }
  return [c.width, c.height, lit, coloured]; }"""
#: When the page sent its first DICOMweb request (ms from the navigation's start: OHIF's own start-up before
#: it), how many it had sent and the bytes they brought
_FETCHES = """() => { const r = performance.getEntriesByType('resource').filter(e => e.name.includes('/dicom-web/'));
  return r.length ? [Math.min(...r.map(e => e.startTime)), r.length, r.reduce((a, e) => a + e.encodedBodySize, 0)]
                  : null; }"""
#: a drawn image lights at least this share of the canvas; an overlay colours at least this many pixels
MIN_LIT_SHARE = 0.05
MIN_OVERLAY_PIXELS = 20


class ViewerPageError(DicomflowError):
    """The viewer did not show what it should; the message says what was missing."""


@dataclass
class ViewerLook:
    """What the viewer showed, with the seconds from opening the link."""

    first_image_s: float
    lit_pixels: int
    canvas_pixels: int
    grey_only_before_seg: bool
    #: seconds until the page sent its first DICOMweb request (OHIF's start-up), and what it had fetched by the
    #: first image: requests and bytes
    first_request_s: float | None = None
    requests_by_first_image: int = 0
    bytes_by_first_image: int = 0
    overlay_s: float | None = None
    overlay_pixels: int = 0
    segments: list[str] = field(default_factory=list)
    signed_in_url: str = ""
    responses: int = 0
    #: the modality of each series the study browser lists (MR, SEG, SR, DOC for a PDF report ...)
    series_listed: list[str] = field(default_factory=list)
    #: the URLs of text answers (pages, scripts, JSON) that contained one of the ``forbidden`` strings
    leaked_in: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _poll(page: Any, until: Any, t0: float, timeout_s: float, what: str) -> tuple[float, list[int]]:
    deadline = t0 + timeout_s
    last = None
    while time.perf_counter() < deadline:
        last = page.evaluate(_CANVAS)
        if last and until(last):
            return time.perf_counter() - t0, last
        page.wait_for_timeout(50)
    raise ViewerPageError(f"the viewer drew no {what} within {timeout_s:.0f} s (canvas: {last})")


def _segment_names(page: Any, deadline: float) -> list[str]:
    """The structures the segmentation panel lists, opening the panel (OHIF may open it by itself meanwhile)."""
    rows = page.locator("[data-cy=data-row-title]")
    while time.perf_counter() < deadline:
        try:
            rows.first.wait_for(timeout=3000)
            return [t.strip() for t in rows.all_inner_texts()]
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: the panel is closed; open it
            page.locator("[data-cy=panelSegmentation-btn]").click()
    raise ViewerPageError("the segmentation panel listed no structures")


_TEXT_TYPES = ("text/", "application/json", "application/dicom+json", "application/javascript")


def _leaks(responses: list[Any], forbidden: Sequence[str]) -> list[str]:
    """The URLs of the text answers among ``responses`` that contain a ``forbidden`` string, or whose headers do."""
    found = []
    for resp in responses:
        headers = " ".join(f"{k}: {v}" for k, v in resp.headers.items())
        body = ""
        if resp.headers.get("content-type", "").startswith(_TEXT_TYPES):
            try:
                body = resp.text()
            except Exception:  # noqa: BLE001 - a redirect or an answer the page dropped has no body to read
                body = ""
        if any(f and (f in headers or f in body) for f in forbidden):
            found.append(resp.url)
    return found


def _look(url: str, load_seg: bool, timeout_s: float, screenshot: Path | None,
          forbidden: Sequence[str]) -> ViewerLook:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.add_init_script("performance.setResourceTimingBufferSize(100000)")
            responses: list[Any] = []
            page.on("response", lambda resp: responses.append(resp))
            t0 = time.perf_counter()
            page.goto(url)
            first_s, canvas = _poll(page, lambda c: c[2] >= MIN_LIT_SHARE * c[0] * c[1], t0, timeout_s, "image")
            look = ViewerLook(first_s, canvas[2], canvas[0] * canvas[1], canvas[3] < MIN_OVERLAY_PIXELS,
                              signed_in_url=page.url)
            fetched = page.evaluate(_FETCHES)
            if fetched:
                look.first_request_s, look.requests_by_first_image, look.bytes_by_first_image = (
                    fetched[0] / 1000, int(fetched[1]), int(fetched[2]))
            if load_seg:
                seg = page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text="SEG").first
                seg.wait_for(timeout=timeout_s * 1000)
                seg.dblclick()
                look.overlay_s, canvas = _poll(page, lambda c: c[3] >= MIN_OVERLAY_PIXELS, t0, timeout_s,
                                               "segmentation overlay")
                look.overlay_pixels = canvas[3]
                look.segments = _segment_names(page, t0 + timeout_s)
            look.series_listed = sorted(t.strip() for t in
                                        page.locator("[data-cy=series-modality-label]").all_inner_texts())
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            look.responses, look.leaked_in = len(responses), _leaks(responses, forbidden)
            return look
        finally:
            browser.close()


def look_at_study(url: str, load_seg: bool = True, timeout_s: float = 90, screenshot: Path | None = None,
                  forbidden: Sequence[str] = ()) -> ViewerLook:
    """Open the viewer ``url`` (a sign-in link) and report what it drew; :class:`ViewerPageError` if it did not.
    ``forbidden`` strings (a PACS password) are looked for in every text answer the page received.

    Runs on a thread of its own: Playwright's sync API refuses a thread whose event loop another user holds."""
    require_chromium()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["look"] = _look(url, load_seg, timeout_s, screenshot, forbidden)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=run, name="viewer-page", daemon=True)
    worker.start()
    worker.join(timeout_s * 3)
    if "error" in result:
        raise result["error"]
    if "look" not in result:
        raise ViewerPageError(f"the viewer page did not finish within {timeout_s * 3:.0f} s")
    return result["look"]

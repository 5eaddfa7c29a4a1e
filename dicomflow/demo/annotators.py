"""Simulated annotators: people's answers in the real worker template, typed by Playwright into Debian's
headless Chromium.

Annotator 1 ticks the seeder's truth; the others flip one class on a share of the images
(:func:`annotator_labels`), so consolidation votes on real disagreement. The browser is Debian's
``chromium`` (never a downloaded one) with the flags this machine needs.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomflow.demo.synthetic import CHEST_CLASSES, NO_FINDING
from dicomflow.errors import DicomflowError

#: Debian's Chromium and its headless launch flags (the demo's annotators, the browser tests, the benchmark).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LABEL_SET = [NO_FINDING, *CHEST_CLASSES]


class AnnotatorError(DicomflowError):
    """The simulated annotators cannot run (no browser) or the worker page failed."""


def annotator_labels(truth: list[str], annotator: int, sop: str, seed: int,
                     flip_rates: tuple[float, ...]) -> list[str]:
    """What simulated annotator ``annotator`` (0-based) ticks: the truth, with one class flipped on a share
    ``flip_rates[annotator]`` of the images (deterministic in seed, image and annotator)."""
    rate = flip_rates[annotator] if annotator < len(flip_rates) else flip_rates[-1]
    rng = random.Random(f"{seed}:{annotator}:{sop}")  # noqa: S311 - simulation, not security
    labels = [c for c in truth if c != NO_FINDING]
    if rng.random() < rate:
        flipped = rng.choice(CHEST_CLASSES)
        labels = [c for c in labels if c != flipped] if flipped in labels else [*labels, flipped]
    return [c for c in LABEL_SET if c in labels] or [NO_FINDING]


def expected_majority(answers: list[list[str]]) -> list[str]:
    """Classes ticked by more than half of the answers (what the consolidation Lambda should keep)."""
    return [c for c in LABEL_SET if sum(c in a for a in answers) * 2 > len(answers)]


def annotate_in_browser(signin_url: Callable[[str], str], workers: list[str],
                        choose: Callable[[int, str], list[str]], total: int,
                        on_progress: Callable[[int, int], None]) -> dict[str, list[list[str]]]:
    """Each worker signs in with its own browser and labels until the portal says done; the workers
    label at the same time, as a team does.

    ``choose(worker index, SOP Instance UID)`` gives the classes to tick; the answers by SOP Instance
    UID are returned.
    """
    def tick(index: int, page: Any, task: dict[str, Any]) -> tuple[str, list[str]]:
        sop = task.get("sopInstanceUID") or task["instances"][0]["sopInstanceUID"]
        labels = choose(index, sop)
        box = page.locator("[data-testid=image-labels]")
        for name in labels:
            box.get_by_label(name, exact=True).check()
        return sop, labels

    return _team(signin_url, workers, tick, total, on_progress, "ready")


def review_in_browser(signin_url: Callable[[str], str], workers: list[str],
                      choose: Callable[[int, str], list[str]], total: int,
                      on_progress: Callable[[int, int], None]) -> dict[str, list[dict[str, Any]]]:
    """Like :func:`annotate_in_browser` for tasks that show the model's suggestions: a worker whose own
    judgement (``choose``) shares a class with the suggestion clicks the template's *Accept*, then ticks and
    unticks until the labels are their own; returns ``{"labels", "accepted", "suggested"}`` by SOP Instance
    UID (``suggested`` None when the task had no suggestions)."""
    def review(index: int, page: Any, task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sop = task.get("sopInstanceUID") or task["instances"][0]["sopInstanceUID"]
        labels = choose(index, sop)
        shown = task.get("suggestions") or {}
        suggested = list(shown.get("suggested") or []) if shown.get("status") == "ok" else None
        accepted = bool(suggested and set(suggested) & set(labels))
        if accepted:
            page.locator("[data-action=accept-suggestions]").click()
        box = page.locator("[data-testid=image-labels]")
        for name in LABEL_SET:
            box.get_by_label(name, exact=True).set_checked(name in labels)
        return sop, {"labels": labels, "accepted": accepted, "suggested": suggested}

    return _team(signin_url, workers, review, total, on_progress, "ready")


def outline_in_browser(signin_url: Callable[[str], str], workers: list[str],
                       outlines: Callable[[int, dict[str, Any]], list[dict[str, Any]]], total: int,
                       on_progress: Callable[[int, int], None]) -> dict[str, list[int]]:
    """Like :func:`annotate_in_browser` for series: once every slice is loaded, each worker places the outlines
    ``outlines(worker index, task input)`` gives through the template's own outline API (what its Freehand ROI
    tool makes) and submits; returns the outline counts by Series Instance UID."""
    def draw(index: int, page: Any, task: dict[str, Any]) -> tuple[str, int]:
        drawn = page.evaluate("rois => window.dicomflowViewer.drawOutlines(rois)", outlines(index, task))
        return task["seriesInstanceUID"], drawn

    return _team(signin_url, workers, draw, total, on_progress, "imagesLoaded")


def _team(signin_url: Callable[[str], str], workers: list[str], act: Callable[[int, Any, dict[str, Any]], Any],
          total: int, on_progress: Callable[[int, int], None], ready: str) -> dict[str, list[Any]]:
    """The workers at the same time, each in its own thread with its own Playwright (its sync API is not
    thread-safe, and refuses a thread that already has an asyncio loop: a notebook, or a test session that
    drives its own browser); ``act(worker index, page, task input)`` answers one task: ``(key, answer)``."""
    answers: dict[str, list[Any]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def record(key: str, answer: Any) -> None:
        with lock:
            answers.setdefault(key, []).append(answer)
            done = sum(len(v) for v in answers.values())
        on_progress(done, total)

    def work(index: int, worker: str) -> None:
        try:
            _annotate(signin_url(worker), worker, lambda page, task: act(index, page, task), record, ready)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    require_chromium("or use --interactive and label in your own browser")
    threads = [threading.Thread(target=work, args=(i, w), name=f"annotator-{w}", daemon=True)
               for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return answers


def require_chromium(otherwise: str = "") -> None:
    """:class:`AnnotatorError` unless playwright and Debian's Chromium are installed; ``otherwise`` names what
    the user can do without them."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise AnnotatorError("headless Chromium needs playwright: pip install playwright "
                             "(the browser is Debian's chromium; never run 'playwright install')") from exc
    if not Path(CHROMIUM).exists():
        raise AnnotatorError(f"{CHROMIUM} not found: apt-get install chromium (or run 'make setup')"
                             + (f", {otherwise}" if otherwise else ""))


def _annotate(url: str, worker: str, act: Callable[[Any, dict[str, Any]], tuple[str, Any]],
              record: Callable[[str, Any], None], ready: str) -> None:
    """One worker's session: sign in, then answer every task the portal gives until it says done."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1100, "height": 800}).new_page()
            page.goto(url)
            while True:
                page.wait_for_function(
                    "() => document.body && (document.body.dataset.done === 'true' || (window.dicomflowViewer"
                    f" && (window.dicomflowViewer.{ready} || window.dicomflowViewer.error)))", timeout=120_000)
                if page.evaluate("document.body.dataset.done === 'true'"):
                    break
                error = page.evaluate("window.dicomflowViewer.error")
                if error:
                    raise AnnotatorError(f"{worker}: the viewer failed: {error}")
                task = json.loads(page.locator("#dicomflow-viewer").get_attribute("data-task") or "{}")
                key, answer = act(page, task)
                with page.expect_navigation():
                    page.locator("#dicomflow-submit").click()
                record(key, answer)
            page.context.close()
        finally:
            browser.close()


def annotator_outlines(label_volume: Any, sop_order: list[str], structures: list[str], *, seed: int,
                       jitter_px: float = 0.0, miss_rate: float = 0.0) -> list[dict[str, Any]]:
    """A simulated annotator's freehand outlines of a series (the worker template's ROI shape), drawn from the
    seeded truth: each structure's outline on each slice where it shows, every vertex moved by Gaussian noise
    of ``jitter_px`` pixels (a shaky hand), and a slice left out with probability ``miss_rate``."""
    import numpy as np

    from dicomflow.inference.sections import boundaries

    rng = np.random.default_rng(seed)
    rois = []
    for k, sop in enumerate(sop_order):
        if miss_rate and rng.random() < miss_rate:
            continue
        for value, name in enumerate(structures, start=1):
            mask = np.asarray(label_volume[k]) == value
            if not mask.any():
                continue
            for line in boundaries(mask):
                pts = np.asarray(line[:-1], dtype=float)  # the closing point repeats the first
                if len(pts) < 3:
                    continue
                if jitter_px:
                    pts = pts + rng.normal(0.0, jitter_px, pts.shape)
                rois.append({"type": "freehand", "label": name, "sopInstanceUID": sop,
                             "points": [[round(float(x), 2), round(float(y), 2)] for x, y in pts]})
    return rois

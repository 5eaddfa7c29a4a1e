"""The stable-study feed with several Lambdas: each gets every stable study once; one that fails is asked again
without asking the others twice, and is dead-lettered after ATTEMPTS while the feed moves on.

Orthanc's change log and the Lambda invoke are the feed's two edges; here they are in-memory stand-ins (the
real ones run in tests/integration/test_routing.py and the end-to-end demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomflow.routing.feed import ATTEMPTS, StableStudyFeed


class ChangeLog:
    """Orthanc's ``/changes`` for a list of (type, study UID)."""

    def __init__(self, changes: list[tuple[str, str]]) -> None:
        self.rows = [{"Seq": n, "ChangeType": kind, "ID": f"orthanc-{uid}"} for n, (kind, uid) in
                     enumerate(changes, start=1)]

    def changes(self, since: int, limit: int) -> dict:
        rows = [r for r in self.rows if r["Seq"] > since][:limit]
        last = rows[-1]["Seq"] if rows else since
        return {"Changes": rows, "Last": last, "Done": last >= len(self.rows)}

    def study_uid(self, orthanc_id: str) -> str:
        return orthanc_id.removeprefix("orthanc-")

    def last_change(self) -> int:
        return len(self.rows)


class Feed(StableStudyFeed):
    def __init__(self, log: ChangeLog, functions: list[str], path: Path, failing: dict[str, int]) -> None:
        super().__init__(log, functions, path)  # type: ignore[arg-type]
        self.failing, self.calls, self.letters = dict(failing), [], []

    def _deliver(self, function: str, uid: str) -> str | None:
        self.calls.append((function, uid))
        if self.failing.get(function, 0) > 0:
            self.failing[function] -= 1
            return "the endpoint is down"
        return None

    def _dead_letter(self, function: str, uid: str, why: str) -> None:
        self.letters.append((function, uid, why))


def test_every_function_gets_each_stable_study_once_in_order(tmp_path) -> None:
    log = ChangeLog([("NewInstance", "9"), ("StableStudy", "1.2.1"), ("StableSeries", "x"), ("StableStudy", "1.2.2")])
    feed = Feed(log, ["router", "search"], tmp_path / "pos.json", {})
    assert feed.poll() == ["1.2.1", "1.2.2"]
    assert feed.calls == [("router", "1.2.1"), ("search", "1.2.1"), ("router", "1.2.2"), ("search", "1.2.2")]
    assert feed.poll() == [] and feed.position() == 4


def test_a_failing_function_is_asked_again_alone_then_dead_lettered(tmp_path) -> None:
    log = ChangeLog([("StableStudy", "1.2.1"), ("StableStudy", "1.2.2")])
    feed = Feed(log, ["router", "search"], tmp_path / "pos.json", {"search": ATTEMPTS})
    for _ in range(ATTEMPTS - 1):
        assert feed.poll() == []  # search failed: the feed stops at this change, to ask again next time
        assert feed.position() == 0
    assert feed.poll() == ["1.2.1", "1.2.2"]
    assert feed.calls.count(("router", "1.2.1")) == 1  # the router is not asked twice
    assert feed.calls.count(("search", "1.2.1")) == ATTEMPTS
    assert feed.letters == [("search", "1.2.1", "the endpoint is down")]
    assert ("search", "1.2.2") in feed.calls and feed.position() == 2


def test_a_restarted_feed_goes_on_from_the_saved_position(tmp_path) -> None:
    log = ChangeLog([("StableStudy", "1.2.1")])
    Feed(log, ["router"], tmp_path / "pos.json", {}).poll()
    log.rows.append({"Seq": 2, "ChangeType": "StableStudy", "ID": "orthanc-1.2.2"})
    again = Feed(log, ["router"], tmp_path / "pos.json", {})
    assert again.poll() == ["1.2.2"] and again.calls == [("router", "1.2.2")]


def test_a_feed_needs_a_function(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least one function"):
        StableStudyFeed(ChangeLog([]), [], tmp_path / "pos.json")  # type: ignore[arg-type]

"""The one UID check and the deterministic UIDs (label import, synthetic data) rely on these."""

from __future__ import annotations

import pytest

from dicomflow.dicom.uid import MAX_LENGTH, derived_uid, is_uid


@pytest.mark.parametrize("value", ["1.2.840.10008.1.2", "2.25.1", "1" * MAX_LENGTH])
def test_uids_are_accepted(value: str) -> None:
    assert is_uid(value)


@pytest.mark.parametrize("value", ["", "1..2", ".1.2", "1.2.", " 1.2", "1.2a", "1" * (MAX_LENGTH + 1), 12, None])
def test_non_uids_are_refused(value) -> None:
    assert not is_uid(value)


def test_derived_uids_are_stable_valid_and_distinct() -> None:
    first = derived_uid("label-import", "1.2.3", "abc", "series")
    assert first == derived_uid("label-import", "1.2.3", "abc", "series") and is_uid(first)
    assert first.startswith("2.25.")
    others = {derived_uid("label-import", "1.2.3", "abc", "instance"), derived_uid("other", "1.2.3", "abc", "series"),
              derived_uid("label-import", "1.2.3a", "bc", "series")}  # the join cannot be forged by moving text
    assert first not in others and len(others) == 3

"""How a transform job turns one input object into requests (SplitType, BatchStrategy, MaxPayloadInMB)."""

from __future__ import annotations

import pytest

from dicomflow.emulator.moto.transform_jobs import _ObjectFailed, _Settings, requests_for


def _settings(strategy: str = "MultiRecord", split: str = "Line", payload: int = 16) -> _Settings:
    return _Settings(strategy=strategy, split=split, payload_bytes=payload, concurrency=1, timeout=1.0, retries=0,
                     content_type=None, accept=None, assemble="Line")


def test_none_split_sends_the_object_whole() -> None:
    assert requests_for(b"a\nb\n", _settings(split="None")) == [b"a\nb\n"]


def test_single_record_sends_one_line_per_request_and_skips_blank_lines() -> None:
    assert requests_for(b"a\n\nbb\n", _settings(strategy="SingleRecord")) == [b"a", b"bb"]


def test_multi_record_packs_lines_up_to_the_payload_limit() -> None:
    body = b"\n".join([b"aaaa", b"bbbb", b"cccc", b"dddd"])  # 4 bytes each; 16-byte payload
    assert requests_for(body, _settings()) == [b"aaaa\nbbbb\ncccc", b"dddd"]
    assert requests_for(body, _settings(payload=0)) == [body]  # 0: no limit


def test_a_record_over_the_limit_fails_its_object() -> None:
    with pytest.raises(_ObjectFailed, match="a record of 17 bytes exceeds MaxPayloadInMB"):
        requests_for(b"x" * 17, _settings(split="None"))

"""Viewer sign-in tickets and sessions: one person, one use, a bounded life, this viewer's key only."""

from __future__ import annotations

import stat
import time

import jwt
import pytest

from dicomflow.emulator.viewer import access

KEY = b"k" * 32


def test_a_ticket_signs_its_user_in_once_and_opens_its_study() -> None:
    book = access.TicketBook(KEY)
    token = access.mint_ticket(KEY, "dr-who", "1.2.3")
    ticket = book.redeem(token)
    assert (ticket.user, ticket.study) == ("dr-who", "1.2.3")
    with pytest.raises(access.Refused, match="used already"):
        book.redeem(token)


def test_a_redeemed_ticket_stays_redeemed_across_a_restart(tmp_path) -> None:
    token = access.mint_ticket(KEY, "dr-who")
    access.TicketBook(KEY, tmp_path / "redeemed.json").redeem(token)
    assert stat.S_IMODE((tmp_path / "redeemed.json").stat().st_mode) == 0o600
    with pytest.raises(access.Refused, match="used already"):
        access.TicketBook(KEY, tmp_path / "redeemed.json").redeem(token)


def test_a_ticket_expires() -> None:
    now = time.time()
    token = access.mint_ticket(KEY, "dr-who", ttl_s=60, now=now)
    with pytest.raises(access.Refused, match="expired"):
        access.TicketBook(KEY).redeem(token, now=now + 61)
    assert access.TicketBook(KEY).redeem(token, now=now + 59).user == "dr-who"


@pytest.mark.parametrize("token", [
    "", "not-a-jwt", "x" * 5000,
    jwt.encode({"aud": access.TICKET_AUDIENCE, "sub": "a", "exp": time.time() + 60, "jti": "1"}, b"another key" * 3,
               algorithm="HS256"),
    jwt.encode({"aud": access.SESSION_AUDIENCE, "sub": "a", "exp": time.time() + 60, "jti": "1"}, KEY,
               algorithm="HS256"),
    jwt.encode({"aud": access.TICKET_AUDIENCE, "sub": "a", "jti": "1"}, KEY, algorithm="HS256"),
    jwt.encode({"aud": access.TICKET_AUDIENCE, "sub": "a", "exp": time.time() + 60}, KEY, algorithm="HS256"),
    jwt.encode({"aud": access.TICKET_AUDIENCE, "sub": "a", "exp": time.time() + 60, "jti": "1"}, None,
               algorithm="none"),
], ids=["empty", "garbage", "huge", "other-key", "a-session", "no-exp", "no-id", "alg-none"])
def test_anything_but_a_ticket_of_this_viewer_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(access.Refused) as refused:
        access.TicketBook(KEY).redeem(token)
    assert token[:20] not in str(refused.value) or not token


def test_a_session_names_its_user_and_a_ticket_is_no_session() -> None:
    assert access.session_user(KEY, access.session_token(KEY, "dr-who")) == "dr-who"
    for bad in (None, "", access.mint_ticket(KEY, "dr-who"), access.session_token(b"z" * 32, "dr-who"),
                access.session_token(KEY, "dr-who", ttl_s=-1)):
        with pytest.raises(access.Refused):
            access.session_user(KEY, bad)


def test_the_key_is_made_once_and_owner_only(tmp_path) -> None:
    first = access.viewer_key(tmp_path / "secrets")
    assert access.viewer_key(tmp_path / "secrets") == first and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "secrets" / access.KEY_FILE).stat().st_mode) == 0o600

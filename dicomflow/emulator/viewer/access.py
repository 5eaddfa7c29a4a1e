"""Who may open the local viewer: sign-in tickets and the session cookie a ticket is exchanged for.

A **ticket** is what a sign-in link carries: an HS256 JWT (PyJWT) for one person, valid for
:data:`TICKET_TTL_S`, redeemed once (the gateway remembers the ids it has redeemed until they expire), so the
link does not outlive the task it was made for. Whoever can read the data dir's ``secrets/viewer.key`` (0600)
can mint one: that is who runs ``dicomflow view``. A **session** is an HS256 JWT of its own audience in an
HttpOnly, SameSite=Strict cookie, valid for :data:`SESSION_TTL_S`.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt

from dicomflow.config import Settings, read_secret_file, write_secret_file
from dicomflow.errors import DicomflowError

KEY_FILE = "viewer-key.json"
TICKET_AUDIENCE = "dicomflow-viewer-signin"
SESSION_AUDIENCE = "dicomflow-viewer-session"
TICKET_TTL_S = 15 * 60
SESSION_TTL_S = 8 * 3600
COOKIE = "dicomflow_viewer"
MAX_TOKEN_CHARS = 2048


class Refused(DicomflowError):
    """A ticket or session that does not let its holder in; the message says why (never the token)."""


@dataclass(frozen=True)
class Ticket:
    user: str
    study: str | None
    ticket_id: str
    expires: float


def viewer_key(secrets_dir: Path) -> bytes:
    """The key that signs tickets and sessions of this local cloud, made on first use (0600)."""
    path = Path(secrets_dir) / KEY_FILE
    if not path.exists():
        write_secret_file(path, {"key": secrets.token_urlsafe(32)})
    return read_secret_file(path)["key"].encode()


def mint_ticket(key: bytes, user: str, study: str | None = None, ttl_s: int = TICKET_TTL_S,
                now: float | None = None) -> str:
    """A sign-in ticket for ``user`` (optionally opening ``study``), valid for ``ttl_s`` seconds."""
    issued = int(time.time() if now is None else now)
    claims = {"aud": TICKET_AUDIENCE, "sub": user, "iat": issued, "exp": issued + ttl_s, "jti": uuid.uuid4().hex}
    if study:
        claims["study"] = study
    return jwt.encode(claims, key, algorithm="HS256")


def _decode(key: bytes, token: str, audience: str, what: str, now: float | None) -> dict:
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise Refused(f"no usable {what}")
    try:  # expiry is checked below, against ``now`` when one is given
        claims = jwt.decode(token, key, algorithms=["HS256"], audience=audience,
                            options={"require": ["exp", "sub", "aud"], "verify_exp": False})
    except jwt.InvalidTokenError:
        raise Refused(f"the {what} is not valid for this viewer") from None
    if not isinstance(claims["exp"], int | float) or claims["exp"] <= (time.time() if now is None else now):
        raise Refused(f"the {what} has expired")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise Refused(f"the {what} names no user")
    return claims


class TicketBook:
    """Redeems tickets once each; remembers redeemed ids until they expire, in ``path`` too when given (so a
    restarted gateway still refuses a link it has let in)."""

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        self.key, self.path = key, path
        self._used: dict[str, float] = {}
        if path is not None and path.exists():
            try:
                self._used = {str(k): float(v) for k, v in read_secret_file(path).items()}
            except (ValueError, TypeError, AttributeError):
                self._used = {}  # an unreadable record: tickets already redeemed expire within TICKET_TTL_S
        self._lock = threading.Lock()

    def peek(self, token: str, now: float | None = None) -> Ticket | None:
        """The ticket ``token`` is (valid and unexpired, used or not), without redeeming it; None otherwise."""
        try:
            claims = _decode(self.key, token, TICKET_AUDIENCE, "sign-in link", now)
        except Refused:
            return None
        study = claims.get("study")
        return Ticket(claims["sub"], study if isinstance(study, str) else None, str(claims.get("jti") or ""),
                      float(claims["exp"]))

    def redeem(self, token: str, now: float | None = None) -> Ticket:
        claims = _decode(self.key, token, TICKET_AUDIENCE, "sign-in link", now)
        current = time.time() if now is None else now
        ticket_id = str(claims.get("jti") or "")
        if not ticket_id:
            raise Refused("the sign-in link has no id")
        with self._lock:
            self._used = {k: exp for k, exp in self._used.items() if exp > current}
            if ticket_id in self._used:
                raise Refused("this sign-in link has been used already; ask for a new one ('dicomflow view')")
            self._used[ticket_id] = float(claims["exp"])
            if self.path is not None:
                write_secret_file(self.path, self._used)
        study = claims.get("study")
        return Ticket(claims["sub"], study if isinstance(study, str) else None, ticket_id, float(claims["exp"]))


def sign_in_link(settings: Settings, user: str, study: str | None = None, ttl_s: int = TICKET_TTL_S) -> str:
    """A link that signs ``user`` in to the local cloud's viewer once, within ``ttl_s``, and opens ``study``."""
    ticket = mint_ticket(viewer_key(settings.secrets_dir), user, study, ttl_s)
    return f"http://{settings.host}:{settings.viewer_port}/signin?ticket={ticket}"


def session_token(key: bytes, user: str, ttl_s: int = SESSION_TTL_S, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return jwt.encode({"aud": SESSION_AUDIENCE, "sub": user, "iat": issued, "exp": issued + ttl_s}, key,
                      algorithm="HS256")


def session_user(key: bytes, token: str | None, now: float | None = None) -> str:
    """The user a session cookie signs in; :class:`Refused` for none, a forged, expired or foreign one."""
    return _decode(key, token or "", SESSION_AUDIENCE, "session", now)["sub"]

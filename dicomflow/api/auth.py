"""Who is asking: an Amazon Cognito user pool's JWT checked on every request (PyJWT).

A token is accepted only when all of these hold, else :class:`Unauthorized` says which failed:

* signed (RS256) by a key of the pool's JWKS, found by the token's ``kid``;
* ``iss`` is the pool (``https://cognito-idp.<region>.amazonaws.com/<pool id>``), not expired (``exp``),
  issued in the past (``iat``), with a little leeway for clock skew;
* ``token_use`` is ``id`` with ``aud`` the app client, or ``access`` with ``client_id`` the app client.

The user's groups (``cognito:groups``) decide what they may see (:meth:`User.can_read_reports`): report
text and snippets are for :data:`READ_REPORTS_GROUPS`; everyone signed in sees codes, counts and images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from dicomflow.errors import DicomflowError

#: Groups whose members see report text (and snippets); the others see codes, counts and thumbnails.
READ_REPORTS_GROUPS = frozenset({"radiologist"})
GROUPS = ("radiologist", "researcher")
LEEWAY_S = 30
MAX_TOKEN_CHARS = 16_384


class Unauthorized(DicomflowError):
    """No token, or one that is not valid for this API (HTTP 401)."""


class SignInUnavailable(DicomflowError):
    """The user pool's keys cannot be fetched: nobody's token can be checked now (HTTP 503, not the user's fault)."""


class Forbidden(DicomflowError):
    """A valid user asking for what their groups do not allow (HTTP 403)."""


@dataclass(frozen=True)
class User:
    username: str
    groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def can_read_reports(self) -> bool:
        return bool(READ_REPORTS_GROUPS & set(self.groups))


def issuer_of(pool_id: str, region: str) -> str:
    """The ``iss`` of a user pool's tokens."""
    return f"https://cognito-idp.{region}.amazonaws.com/{pool_id}"


class TokenVerifier:
    """Checks tokens of one user pool and app client. ``signing_key(token)`` returns the public key for the
    token's ``kid`` (:meth:`from_jwks_url` fetches and caches the pool's JWKS)."""

    def __init__(self, issuer: str, client_id: str, signing_key: Callable[[str], Any]) -> None:
        self.issuer, self.client_id, self._signing_key = issuer, client_id, signing_key

    @classmethod
    def from_jwks_url(cls, issuer: str, client_id: str, jwks_url: str | None = None) -> TokenVerifier:
        """``jwks_url`` defaults to the pool's own ``<issuer>/.well-known/jwks.json``."""
        client = jwt.PyJWKClient(jwks_url or f"{issuer}/.well-known/jwks.json", cache_keys=True, lifespan=3600)
        return cls(issuer, client_id, lambda token: client.get_signing_key_from_jwt(token).key)

    def verify(self, token: str | None) -> User:
        if not token:
            raise Unauthorized("sign in: send 'Authorization: <Cognito ID or access token>' (or 'Bearer <token>')")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("the token is too long to be a Cognito token")
        try:
            key = self._signing_key(token)
            claims = jwt.decode(token, key, algorithms=["RS256"], issuer=self.issuer, leeway=LEEWAY_S,
                                options={"require": ["exp", "iat", "iss", "token_use"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; sign in again") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token is from another user pool") from None
        except jwt.PyJWKClientConnectionError:
            raise SignInUnavailable("the user pool's signing keys cannot be fetched; try again shortly") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise Unauthorized(f"the token is not valid: {exc}") from None
        use = claims.get("token_use")
        client = claims.get("aud") if use == "id" else claims.get("client_id") if use == "access" else None
        if use not in ("id", "access"):
            raise Unauthorized(f"token_use {use!r} is neither id nor access")
        if client != self.client_id:
            raise Unauthorized("the token is for another app client")
        username = claims.get("cognito:username") or claims.get("username") or claims.get("sub")
        groups = claims.get("cognito:groups") or []
        if not isinstance(username, str) or not isinstance(groups, Sequence) or isinstance(groups, str):
            raise Unauthorized("the token names no user")
        return User(username, tuple(str(g) for g in groups))


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization`` header: ``Bearer <token>``, or the bare token as AppSync takes it;
    None without one."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if not token:
        return None if scheme.lower() == "bearer" else scheme or None  # a bare token has no space
    return token.strip() or None if scheme.lower() == "bearer" else None

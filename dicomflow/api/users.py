"""People of the search page: the stack's Cognito user pool, managed with the admin API (the pool lets only
administrators create users), and the password sign-in the page itself performs.

A user belongs to one of :data:`dicomflow.api.auth.GROUPS`; a new user's password is set as permanent
(given, or generated to satisfy any pool's policy: 20 characters with upper and lower case letters, digits
and a symbol), so there is no first-sign-in challenge. Cognito never sends an invitation (``SUPPRESS``).
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from dicomflow import aws
from dicomflow.api.auth import GROUPS
from dicomflow.errors import DicomflowError

USERNAME = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
PASSWORD_LENGTH = 20


class UserError(DicomflowError):
    """A user cannot be added, listed or removed; the message says why and what to do."""


@dataclass(frozen=True)
class PoolUser:
    username: str
    groups: tuple[str, ...]
    status: str
    enabled: bool
    created: str

    def as_dict(self) -> dict[str, Any]:
        return {"username": self.username, "groups": list(self.groups), "status": self.status,
                "enabled": self.enabled, "created": self.created}


#: Symbols Cognito counts as such that need no quoting in a shell.
SYMBOLS = "-_.+=@%"


def generate_password() -> str:
    """A random password that meets any pool's policy: every class (lower, upper, digit, symbol) present."""
    alphabet = string.ascii_letters + string.digits + SYMBOLS
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(PASSWORD_LENGTH))
        if (any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)
                and any(c in SYMBOLS for c in value)):
            return value


def _message(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Message") or str(exc)


def _check(username: str, group: str | None = None) -> None:
    if not USERNAME.match(username):
        raise UserError(f"{username[:40]!r} is not a usable username: use 1-128 letters, digits and . _ @ + -")
    if group is not None and group not in GROUPS:
        raise UserError(f"group {group!r} is not one of {', '.join(GROUPS)}")


def add_user(pool_id: str, username: str, group: str, password: str | None = None, idp: Any = None) -> str:
    """Create ``username`` in ``group`` with a permanent password (``password`` or a generated one, returned)."""
    _check(username, group)
    idp = idp or aws.client("cognito-idp")
    password = password or generate_password()
    try:
        idp.admin_create_user(UserPoolId=pool_id, Username=username, MessageAction="SUPPRESS")
    except idp.exceptions.UsernameExistsException:
        raise UserError(f"user {username} already exists; remove it first ('dicomflow users rm {username}')") from None
    except ClientError as exc:
        raise UserError(f"cannot create user {username}: {_message(exc)}") from None
    try:
        idp.admin_set_user_password(UserPoolId=pool_id, Username=username, Password=password, Permanent=True)
        idp.admin_add_user_to_group(UserPoolId=pool_id, Username=username, GroupName=group)
    except ClientError as exc:
        idp.admin_delete_user(UserPoolId=pool_id, Username=username)  # no half-made user is left behind
        raise UserError(f"cannot set up user {username}: {_message(exc)}") from None
    return password


def list_users(pool_id: str, idp: Any = None) -> list[PoolUser]:
    idp = idp or aws.client("cognito-idp")
    users = []
    for page in idp.get_paginator("list_users").paginate(UserPoolId=pool_id):
        for u in page["Users"]:
            groups = [g["GroupName"] for g in idp.admin_list_groups_for_user(
                UserPoolId=pool_id, Username=u["Username"]).get("Groups", [])]
            users.append(PoolUser(u["Username"], tuple(sorted(groups)), u.get("UserStatus", ""),
                                  bool(u.get("Enabled", True)), str(u.get("UserCreateDate", ""))))
    return sorted(users, key=lambda u: u.username)


def remove_user(pool_id: str, username: str, idp: Any = None) -> None:
    _check(username)
    idp = idp or aws.client("cognito-idp")
    try:
        idp.admin_delete_user(UserPoolId=pool_id, Username=username)
    except idp.exceptions.UserNotFoundException:
        raise UserError(f"user {username} does not exist ('dicomflow users ls' lists them)") from None


def sign_in(client_id: str, username: str, password: str, idp: Any = None) -> dict[str, str]:
    """The page's sign-in (``USER_PASSWORD_AUTH``): ``{"IdToken", "AccessToken", "RefreshToken", ...}``."""
    idp = idp or aws.client("cognito-idp")
    try:
        answer = idp.initiate_auth(ClientId=client_id, AuthFlow="USER_PASSWORD_AUTH",
                                   AuthParameters={"USERNAME": username, "PASSWORD": password})
    except ClientError as exc:
        raise UserError(f"{username} cannot sign in: {_message(exc)}") from None
    if "AuthenticationResult" not in answer:
        raise UserError(f"{username} cannot sign in: Cognito asks for {answer.get('ChallengeName')}")
    return answer["AuthenticationResult"]

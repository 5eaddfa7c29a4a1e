"""``dicomflow users``: the search page's users in the stack's Cognito user pool."""

from __future__ import annotations

import sys

import click
from rich.text import Text

from dicomflow import aws
from dicomflow.api.auth import GROUPS
from dicomflow.api.users import add_user, list_users, remove_user
from dicomflow.cli.common import json_option, out, print_json, settings_from, value_table
from dicomflow.config import read_state
from dicomflow.infra import stack
from dicomflow.infra.deployment import LOCAL_STACK_KEY

stack_option = click.option("--stack", "stack_name", help="The stack whose user pool (output SearchUserPoolId) "
                            "holds the users [on the local cloud: the stack last deployed to it, whose pool the "
                            f"search page signs in with; else {stack.DEFAULT_STACK}].")


def _pool(ctx: click.Context, stack_name: str | None) -> str:
    if not stack_name:
        recorded = read_state(settings_from(ctx).data_dir).get(LOCAL_STACK_KEY) if aws.is_emulated() else None
        stack_name = recorded or stack.DEFAULT_STACK
    pool = stack.outputs(stack_name).get("SearchUserPoolId")
    if not pool:
        raise click.ClickException(f"stack {stack_name} has no SearchUserPoolId output; deploy it again "
                                   f"('dicomflow infra deploy --stack {stack_name}')")
    return pool


@click.group()
def users() -> None:
    """Who may sign in to the search page and what they see.

    radiologist: report text, snippets and word search; researcher: ICD-10-CM codes, counts and image
    thumbnails only. Users are created by an administrator (here), never by sign-up.
    """


@users.command("add")
@click.argument("username")
@click.option("--group", type=click.Choice(GROUPS), required=True, help="What the user may see.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line) instead of "
              "generating one (12+ characters, upper and lower case letters and digits).")
@stack_option
@json_option
@click.pass_context
def add(ctx: click.Context, username: str, group: str, password_stdin: bool, stack_name: str | None,
        as_json: bool) -> None:
    """Add USERNAME with a permanent password; a generated one is printed once."""
    given = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    if password_stdin and not given:
        raise click.ClickException("no password on stdin; pipe one line, or leave out --password-stdin")
    password = add_user(_pool(ctx, stack_name), username, group, given)
    if as_json:
        print_json({"username": username, "group": group, **({} if given else {"password": password})})
        return
    out.print(Text(f"added {username} ({group})"), soft_wrap=True)
    if not given:
        out.print(Text(f"password (shown once): {password}"), soft_wrap=True)


@users.command("ls")
@stack_option
@json_option
@click.pass_context
def ls(ctx: click.Context, stack_name: str | None, as_json: bool) -> None:
    """The users, their groups and status."""
    found = list_users(_pool(ctx, stack_name))
    if as_json:
        print_json([u.as_dict() for u in found])
        return
    table = value_table("username", "groups", "status", "enabled", "created", title=f"{len(found)} users")
    for u in found:
        table.add_row(u.username, ", ".join(u.groups) or "-", u.status, "yes" if u.enabled else "no", u.created)
    out.print(table)


@users.command("rm")
@click.argument("username")
@stack_option
@json_option
@click.pass_context
def rm(ctx: click.Context, username: str, stack_name: str | None, as_json: bool) -> None:
    """Remove USERNAME (their tokens stop working when they expire, within an hour)."""
    remove_user(_pool(ctx, stack_name), username)
    if as_json:
        print_json({"removed": username})
        return
    out.print(Text(f"removed {username}"), soft_wrap=True)

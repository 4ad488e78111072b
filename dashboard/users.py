"""Accounts and API tokens, for ``painline users ...`` (the CLI) and tests.

There is no default account and no default password: the first admin is created on the server with
``painline users add --role admin USERNAME``, which prompts for the password twice (or reads one line
from standard input when it is not a terminal, for provisioning scripts). API tokens are printed
once by ``painline users token USERNAME``; only their SHA-256 is stored, so a lost token is revoked
(``painline users revoke-tokens USERNAME``) and a new one issued.

A password change and a deactivation end every signed-in web session of the account
(:class:`SessionRevoker`, the deployment's :class:`dashboard.sessions.SessionStore`), after the change
is committed: a sign-in racing the change then either used the old password before the revocation (and
is revoked) or needs the new one. Without that, a stolen session would outlive the password it was
opened with, and a deactivated account's sessions would come back when it is activated again.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from typing import IO, Protocol

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dashboard.security import MIN_PASSWORD_LENGTH, hash_api_token, hash_password, new_api_token
from schema.audit import record
from schema.db import session_scope
from schema.models import ApiToken, User, UserRole, utcnow

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
"""Lower-case letters, digits, dots, dashes and underscores: unambiguous in audit logs and URLs."""

EXIT_FAILED = 1


class UserError(ValueError):
    """The account could not be created or changed as asked; the message says why."""


class SessionRevoker(Protocol):
    """Ends every web session of a user (``dashboard.sessions.SessionStore`` is one)."""

    def revoke_user(self, user_id: int) -> int: ...


def _end_sessions(revoker: SessionRevoker | None, user_id: int, change: str) -> None:
    """Revoke ``user_id``'s sessions after ``change`` was committed; ``None``: the caller has no web sessions."""
    if revoker is None:
        return
    try:
        revoker.revoke_user(user_id)
    except RedisError as exc:
        raise UserError(
            f"{change}, but the account's signed-in sessions could not be ended (Redis unavailable: "
            f"{type(exc).__name__}); run the command again once Redis answers"
        ) from None


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if password.strip() != password:
        raise UserError("the password must not start or end with whitespace")


def add_user(sessions: sessionmaker[Session], username: str, role: str, password: str, *, actor: str = "cli") -> int:
    """Create an account; returns its id. Raises :class:`UserError` for a taken name, bad role or weak password."""
    if not USERNAME_PATTERN.match(username):
        raise UserError("usernames are 2-64 characters: lower-case letters, digits, '.', '_' and '-'")
    if role not in {r.value for r in UserRole}:
        raise UserError(f"role must be one of: {', '.join(r.value for r in UserRole)}")
    check_password(password)
    with session_scope(sessions) as session:
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise UserError(f"user {username!r} already exists")
        user = User(username=username, role=role, password_hash=hash_password(password), active=True)
        session.add(user)
        session.flush()
        record(session, actor, "user.create", "user", user.id, username=username, role=role)
        return user.id


def set_password(
    sessions: sessionmaker[Session], username: str, password: str, *, revoker: SessionRevoker | None, actor: str = "cli"
) -> None:
    """Change the password and end every web session of the account (see the module docstring)."""
    check_password(password)
    with session_scope(sessions) as session:
        user = session.scalars(select(User).where(User.username == username)).one_or_none()
        if user is None:
            raise UserError(f"no user {username!r}")
        user.password_hash = hash_password(password)
        record(session, actor, "user.password", "user", user.id)
        user_id = user.id
    _end_sessions(revoker, user_id, "the password was changed")


def set_active(
    sessions: sessionmaker[Session], username: str, active: bool, *, revoker: SessionRevoker | None, actor: str = "cli"
) -> None:
    """Deactivate (or reactivate) an account. Deactivation ends its web sessions for good (activating
    it again does not bring them back); tokens stop working on the next request and stay revocable."""
    with session_scope(sessions) as session:
        user = session.scalars(select(User).where(User.username == username)).one_or_none()
        if user is None:
            raise UserError(f"no user {username!r}")
        user.active = active
        record(session, actor, "user.activate" if active else "user.deactivate", "user", user.id)
        user_id = user.id
    if not active:
        _end_sessions(revoker, user_id, "the account was deactivated")


def create_api_token(sessions: sessionmaker[Session], username: str, *, actor: str = "cli") -> str:
    """Issue a bearer token for ``username``'s role; returns the token (the only time it is visible)."""
    token = new_api_token()
    with session_scope(sessions) as session:
        user = session.scalars(select(User).where(User.username == username)).one_or_none()
        if user is None:
            raise UserError(f"no user {username!r}")
        row = ApiToken(user_id=user.id, token_hash=hash_api_token(token))
        session.add(row)
        session.flush()
        record(session, actor, "token.create", "user", user.id, token_id=row.id)
    return token


def revoke_api_tokens(sessions: sessionmaker[Session], username: str, *, actor: str = "cli") -> int:
    """Revoke every live token of ``username``; returns how many."""
    with session_scope(sessions) as session:
        user = session.scalars(select(User).where(User.username == username)).one_or_none()
        if user is None:
            raise UserError(f"no user {username!r}")
        tokens = session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        ).all()
        now = utcnow()
        for token in tokens:
            token.revoked_at = now
        record(session, actor, "token.revoke", "user", user.id, tokens=len(tokens))
        return len(tokens)


def read_password(stdin: IO[str] | None = None, prompt: str = "Password: ") -> str:
    """Prompt twice on a terminal; otherwise read one line from ``stdin`` (never from argv or env)."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise UserError("the passwords did not match")
        return first
    return stdin.readline().rstrip("\r\n")


def run_command(
    sessions: sessionmaker[Session],
    args: argparse.Namespace,
    stdin: IO[str] | None = None,
    *,
    revoker: SessionRevoker | None,
) -> int:
    """``painline users add|password|token|revoke-tokens|deactivate|activate``; returns the exit status.

    ``revoker`` ends web sessions on ``password`` and ``deactivate`` (the CLI passes the deployment's
    session store)."""
    actor = f"cli:{getpass.getuser()}"
    try:
        if args.users_command == "add":
            user_id = add_user(sessions, args.username, args.role, read_password(stdin), actor=actor)
            print(f"user {args.username} ({args.role}) created with id {user_id}")
        elif args.users_command == "password":
            set_password(sessions, args.username, read_password(stdin, "New password: "), revoker=revoker, actor=actor)
            print(f"password of {args.username} changed")
        elif args.users_command == "token":
            token = create_api_token(sessions, args.username, actor=actor)
            print(token)
            print("store this token now: it is not shown again", file=sys.stderr)
        elif args.users_command == "revoke-tokens":
            print(f"{revoke_api_tokens(sessions, args.username, actor=actor)} token(s) revoked")
        elif args.users_command in {"deactivate", "activate"}:
            set_active(sessions, args.username, args.users_command == "activate", revoker=revoker, actor=actor)
            print(f"{args.username} {args.users_command}d")
        else:  # pragma: no cover - argparse restricts the choices
            raise UserError(f"unknown action {args.users_command!r}")
    except UserError as exc:
        print(f"painline users {args.users_command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def add_cli_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``painline users ...`` to the CLI's subcommands (the CLI then sets ``func``)."""
    p = sub.add_parser("users", help="web UI accounts and API tokens")
    actions = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="create an account (password prompted, or one line on stdin)")
    a.add_argument("username")
    a.add_argument("--role", required=True, choices=[r.value for r in UserRole])
    for name, summary in (
        ("password", "set a new password (prompted, or one line on stdin)"),
        ("token", "issue an API token with the account's role (printed once)"),
        ("revoke-tokens", "revoke every API token of the account"),
        ("deactivate", "block sign-in and tokens for the account"),
        ("activate", "allow a deactivated account again"),
    ):
        actions.add_parser(name, help=summary).add_argument("username")
    return p


__all__ = [
    "USERNAME_PATTERN",
    "SessionRevoker",
    "UserError",
    "add_cli_parser",
    "add_user",
    "check_password",
    "create_api_token",
    "read_password",
    "revoke_api_tokens",
    "run_command",
    "set_active",
    "set_password",
]

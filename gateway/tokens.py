"""API tokens: created once, stored only as a SHA-256 hash, revocable.

A token is shown exactly once, when it is created (:func:`create_token`); the database keeps its
hash (``ApiToken.token_hash``), its name and its role. :func:`authenticate` maps a presented token
to its row, or ``None`` when the token is unknown or revoked. Every function takes an open
:class:`~sqlalchemy.orm.Session` and leaves committing to the caller.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import ApiToken, utcnow

__all__ = [
    "ROLES",
    "TOKEN_PREFIX",
    "TokenError",
    "UnknownRoleError",
    "InvalidTokenNameError",
    "TokenExistsError",
    "TokenNotFoundError",
    "hash_token",
    "create_token",
    "revoke_token",
    "list_tokens",
    "authenticate",
]

#: ``admin`` changes configuration and retries work (and may read); ``auditor`` only reads.
ROLES = ("admin", "auditor")
#: Makes a leaked token recognisable by secret scanners.
TOKEN_PREFIX = "mrg_"
#: ``last_used_at`` is written at most this often per token (a write on every request would
#: contend with the pipeline on SQLite for no information gain).
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(ValueError):
    """A token operation was refused; the message says why."""


class UnknownRoleError(TokenError):
    pass


class InvalidTokenNameError(TokenError):
    pass


class TokenExistsError(TokenError):
    pass


class TokenNotFoundError(TokenError):
    pass


def hash_token(token: str) -> str:
    """Hex SHA-256 of the token text (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, name: str, role: str) -> str:
    """Create a token called ``name`` with ``role`` and return its text (shown only now).

    Names are unique for ever: a revoked token keeps its name so the audit log, which records
    the name as the actor, stays unambiguous.
    """
    if role not in ROLES:
        raise UnknownRoleError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not _NAME_RE.match(name):
        raise InvalidTokenNameError(
            f"token name {name!r} must be 1-64 characters: letters, digits, '.', '_', '@', '-'"
        )
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenExistsError(f"a token named {name!r} already exists (names are never reused)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role, token_hash=hash_token(token)))
    session.flush()
    return token


def revoke_token(session: Session, name: str) -> ApiToken:
    """Revoke the token called ``name``; revoking twice keeps the first revocation time."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenNotFoundError(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def list_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.name)).all()


def authenticate(session: Session, token: str | None) -> ApiToken | None:
    """The live token row for ``token``, or ``None`` (missing, unknown or revoked)."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        return None
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    # The lookup is by hash, so timing does not reveal the token; compare again anyway.
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
        return None
    if row.role not in ROLES:
        return None
    now = utcnow()
    last = row.last_used_at
    if last is None or now - last >= LAST_USED_RESOLUTION:
        row.last_used_at = now
    return row

"""Institutions' API keys. The demand service issues one when an institution registers (and on
rotation) and keeps only its SHA-256, which it also publishes in ``InstitutionChanged``; the
institution's systems send the key in the gRPC metadata ``x-api-key``, and any service checks it
against that digest, kept in its schema's ``institution_keys`` (:func:`learn`, from :mod:`meshkit.institutions`;
:func:`authenticate`)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import asyncpg
import grpc

from meshkit.errors import FailedPrecondition, PermissionDenied, Unavailable
from meshkit.grpcserver import metadata

HEADER = "x-api-key"
PREFIX = "fmk_"


def new() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """What is kept of a key: its hex SHA-256 (keys are 256 random bits, so no salt is needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, key_digest: str) -> bool:
    """Whether ``key`` is the key of ``key_digest`` (in constant time; never for an empty one)."""
    return bool(key and key_digest) and hmac.compare_digest(digest(key), key_digest)


def from_context(context: grpc.aio.ServicerContext) -> str:
    """The caller's API key from the metadata (empty if none)."""
    return metadata(context, HEADER)


# -- checking a key, in any service --------------------------------------------------------------------


async def learn(conn: asyncpg.Connection | asyncpg.Pool, institution_id: str, version: int, key_digest: str
                ) -> None:
    """Keep the digest of an institution's current key, from its ``InstitutionChanged`` (the latest
    version wins; replays and reordered events change nothing)."""
    await conn.execute(
        "INSERT INTO institution_keys VALUES ($1, $2, $3) ON CONFLICT (institution_id) DO UPDATE"
        " SET version = excluded.version, api_key_sha256 = excluded.api_key_sha256"
        " WHERE institution_keys.version < excluded.version",
        institution_id, version, key_digest,
    )


async def authenticate(conn: asyncpg.Connection | asyncpg.Pool, institution_id: str, key: str) -> None:
    """Return if ``key`` is the current API key of ``institution_id``; else :class:`PermissionDenied`
    (no key, or another one), :class:`Unavailable` while this service has not had the institution's
    registration yet (seconds after it registered: worth retrying), or :class:`FailedPrecondition`
    for an institution announced without a key digest (registered before they were published)."""
    if not key:
        raise PermissionDenied(f"a call for institution {institution_id or '?'} needs its API key in the "
                               f"metadata {HEADER}")
    known = await conn.fetchval("SELECT api_key_sha256 FROM institution_keys WHERE institution_id = $1",
                                institution_id)
    if known is None:
        raise Unavailable(f"institution {institution_id} is not known here yet: its registration arrives "
                          "within seconds; retry")
    if not known:  # announced by a release before key digests were published
        raise FailedPrecondition(f"no API key of institution {institution_id} is known here yet: rotate it once "
                                 "(InstitutionService.RotateApiKey)")
    if not matches(key, known):
        raise PermissionDenied(f"{HEADER} is not the API key of institution {institution_id}")


async def check_caller(pool: asyncpg.Pool, institution_id: str, context: grpc.aio.ServicerContext) -> None:
    """:func:`authenticate` the caller of a gRPC call made for ``institution_id`` with the key in its
    metadata (an empty id is left to the call's own validation, which refuses it)."""
    if institution_id:
        await authenticate(pool, institution_id, from_context(context))

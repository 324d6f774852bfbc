"""Institutions' API keys. The demand service issues one when an institution registers (and on
rotation) and keeps only its SHA-256, which it also publishes in ``InstitutionChanged``; the
institution's systems send the key in the gRPC metadata ``x-api-key``, and any service checks it
against that digest."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import grpc

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
    for key, value in context.invocation_metadata() or ():
        if key == HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""

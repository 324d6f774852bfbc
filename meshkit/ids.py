"""Deterministic ids: an id that comes from a stream is derived from what it is about,
so a replayed event never creates a second copy."""

from __future__ import annotations

import hashlib
import uuid

FINMESH = uuid.UUID("5b1f3a2e-9c4d-4e8a-b7a1-2f6c0d9e8a41")
_NAMESPACE = FINMESH.bytes


def stable_id(kind: str, *parts: str) -> str:
    """A UUID (version 5) from ``kind`` and ``parts``; equal inputs give equal ids.

    Exactly ``str(uuid.uuid5(FINMESH, "|".join((kind, *parts))))``, formatted without building a
    ``uuid.UUID`` (a hot path: several ids per demand and per lead).
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE + "|".join((kind, *parts)).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def demand_id(channel: str, idempotency_key: str) -> str:
    return stable_id("demand", channel, idempotency_key)


def lead_id(demand_id: str, product_id: str) -> str:
    return stable_id("lead", demand_id, product_id)


def roadshow_demand_id(intent_id: str) -> str:
    """The demand the demand service makes of a roadshow intent (channel ROADSHOW, keyed by the intent)."""
    return demand_id("roadshow", intent_id)


def roadshow_lead_id(intent_id: str) -> str:
    """The one lead of that demand: for the investor who recorded the intent."""
    return lead_id(roadshow_demand_id(intent_id), "roadshow")


def event_id(kind: str, *parts: str) -> str:
    """The id of an event that announces a deterministic fact (e.g. 'lead issued')."""
    return stable_id(f"event:{kind}", *parts)

"""What the services keep of the institutions the demand service announces on
``demand.institution-changed.v1``: the digest of each one's API key (:mod:`meshkit.apikeys`) and its
contact SLA, the hours it has to contact an enterprise once it has a lead (in the schema's
``institution_slas``, for the services that have that table: the matcher and the notifier); and
the contact policies the notifier announces on ``notifier.contact-policy-changed.v1`` (in
``contact_policies``: the matcher and the demand service, which date the leads they make by them).
The rule that picks a lead's contact SLA is :mod:`meshkit.contact_sla`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from finmesh.institution.v1 import events_pb2 as institution_events
from finmesh.institution.v1 import institution_pb2
from finmesh.notification.v1 import clock_pb2
from finmesh.notification.v1 import events_pb2 as notification_events
from meshkit import apikeys, codec
from meshkit.contact_sla import MAX_CONTACT_SLA_HOURS, valid_hours


def announced(env: codec.Envelope) -> institution_events.InstitutionChanged:
    """The ``InstitutionChanged`` of ``env``; :class:`codec.PoisonMessage` if it names no institution
    or an SLA out of range."""
    assert isinstance(env.message, institution_events.InstitutionChanged)
    i = env.message.institution
    if not i.institution_id:
        raise codec.PoisonMessage("unusable InstitutionChanged: institution.institution_id is empty")
    if not valid_hours(i.contact_sla_hours):
        raise codec.PoisonMessage(f"unusable InstitutionChanged: institution.contact_sla_hours must be between 0 "
                                  f"and {MAX_CONTACT_SLA_HOURS}, not {i.contact_sla_hours}")
    return env.message


async def learn(conn: asyncpg.Connection, changed: institution_events.InstitutionChanged) -> bool:
    """Keep the institution's contact SLA (0 if it set none) and its key digest, in the caller's
    transaction. The latest version wins, so replays and reordered events change nothing: returns
    False for those."""
    i: institution_pb2.Institution = changed.institution
    status = await conn.execute(
        "INSERT INTO institution_slas VALUES ($1, $2, $3) ON CONFLICT (institution_id) DO UPDATE"
        " SET sla_hours = excluded.sla_hours, version = excluded.version"
        " WHERE institution_slas.version < excluded.version",
        i.institution_id, i.contact_sla_hours, i.version,
    )
    await apikeys.learn(conn, i.institution_id, i.version, changed.api_key_sha256)
    return status == "INSERT 0 1"


def learner(pool: asyncpg.Pool, then: Callable[[institution_pb2.Institution], None] | None = None
            ) -> Callable[[codec.Envelope], Awaitable[None]]:
    """A consumer of ``demand.institution-changed.v1`` that :func:`learn`\\ s each institution, then
    calls ``then`` with a version it had not had (to make a worker's memory current at once rather
    than at its next refresh)."""

    async def handle(env: codec.Envelope) -> None:
        changed = announced(env)
        async with pool.acquire() as conn, conn.transaction():
            if await learn(conn, changed) and then is not None:
                then(changed.institution)  # before the commit: nothing reads the row before the memory has it

    return handle


async def contact_slas(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Each known institution's own contact SLA in hours (those that set none are left out)."""
    rows = await conn.fetch("SELECT institution_id, sla_hours FROM institution_slas WHERE sla_hours > 0")
    return {r["institution_id"]: r["sla_hours"] for r in rows}


# -- contact policies ---------------------------------------------------------------------------------


def policy_announced(env: codec.Envelope) -> tuple[clock_pb2.ContactPolicy, datetime]:
    """The policy of a ``ContactPolicyChanged`` and when it was set; :class:`codec.PoisonMessage` if it
    names no institution, sets an SLA out of range or has no usable time."""
    assert isinstance(env.message, notification_events.ContactPolicyChanged)
    p = env.message.policy
    if not p.institution_id or not valid_hours(p.sla_hours):
        raise codec.PoisonMessage(f"unusable ContactPolicyChanged: policy.institution_id is required and "
                                  f"policy.sla_hours must be between 0 and {MAX_CONTACT_SLA_HOURS}")
    try:
        return p, p.updated_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as err:
        raise codec.PoisonMessage(f"unusable ContactPolicyChanged: policy.updated_at: {err}") from None


async def learn_policy(conn: asyncpg.Connection | asyncpg.Pool, policy: clock_pb2.ContactPolicy,
                       updated_at: datetime) -> None:
    """Keep a contact policy in place of the one before: the topic is in order per institution, so
    the last one to arrive is the one in force."""
    await conn.execute(
        "INSERT INTO contact_policies VALUES ($1, $2, $3, $4) ON CONFLICT (institution_id, product_id) DO UPDATE"
        " SET sla_hours = excluded.sla_hours, updated_at = excluded.updated_at",
        policy.institution_id, policy.product_id, policy.sla_hours, updated_at,
    )


async def contact_policies(conn: asyncpg.Connection | asyncpg.Pool) -> dict[tuple[str, str], int]:
    """(institution id, product id or '') -> hours, of every policy that sets an SLA."""
    rows = await conn.fetch("SELECT institution_id, product_id, sla_hours FROM contact_policies WHERE sla_hours > 0")
    return {(r["institution_id"], r["product_id"]): r["sla_hours"] for r in rows}


async def policy_hours(conn: asyncpg.Connection | asyncpg.Pool, institution_id: str, product_id: str = "") -> int:
    """The SLA one policy sets (of the institution's product, or ``''``: of the institution), else 0."""
    return await conn.fetchval("SELECT sla_hours FROM contact_policies WHERE institution_id = $1 AND product_id = $2",
                               institution_id, product_id) or 0

"""PostgreSQL: connection pools and ordered SQL migrations, one schema per service.

Migrations are files ``NNN_name.sql`` in a service's ``migrations/`` folder, applied in
order, each once, in its own transaction, under an advisory lock so that replicas
starting together do not race. Applied versions are kept in ``<schema>.schema_migrations``.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import asyncpg

_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

# Failures that pass by themselves: the server unreachable, restarting or shutting down (classes 08
# and 57), out of connections or memory (53), a transaction chosen as a deadlock's victim or failing
# serialisation (40), a lock not available now (55P03), an I/O error of the server (58), a standby
# refusing writes or a session timed out during a failover (25006, 25P03; not the rest of class 25,
# which are defects such as 25P02, a transaction used after it failed), a prepared statement
# invalidated by a migration (0A000, cached plan).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.PostgresSystemError,
    asyncpg.exceptions.ReadOnlySQLTransactionError, asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.exceptions.InvalidCachedStatementError,
)


def transient(err: BaseException) -> bool:
    """Whether a database failure may pass by itself (:data:`TRANSIENT_ERRORS`, or a pool or connection
    closed under the caller: asyncpg's bare ``InterfaceError``, not its subclasses such as
    ``DataError``, an argument the query cannot take)."""
    return isinstance(err, TRANSIENT_ERRORS) or type(err) is asyncpg.InterfaceError


async def create_pool(url: str, *, schema: str, max_size: int = 10, min_size: int = 1) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` first on their search path.

    A connection goes back to the pool without asyncpg's reset query (``RESET ALL``, ``UNLISTEN *``,
    advisory unlocks: a round trip after every use). Our services leave no session state on pooled
    connections: settings come from the pool, locks are transaction-scoped, listeners use
    connections of their own. An open transaction is still rolled back by asyncpg itself.
    """
    return await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": f"{schema},public", "application_name": schema},
        command_timeout=30,
        reset=_no_session_state,
    )


async def _no_session_state(_conn: asyncpg.Connection) -> None:
    """Nothing to reset (see :func:`create_pool`)."""


def migration_files(folder: Path) -> list[tuple[int, Path]]:
    files = []
    for path in sorted(folder.glob("*.sql")):
        m = _MIGRATION.match(path.name)
        if not m:
            raise ValueError(f"migration file {path.name} must be named NNN_name.sql")
        files.append((int(m.group(1)), path))
    versions = [v for v, _ in files]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {folder}")
    return files


RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate(url: str, schema: str, folder: Path) -> list[str]:
    """Apply the runtime's migrations (outbox, inbox, institutions' key digests), then the pending ones of ``folder``,
    to ``schema``; returns the names applied."""
    applied: list[str] = []
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", zlib.crc32(f"migrate:{schema}".encode()))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}", public')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for source, src_folder in (("meshkit", RUNTIME_MIGRATIONS), (schema, folder)):
                for _version, path in migration_files(src_folder):
                    name = f"{source}/{path.name}"
                    if name in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(path.read_text(encoding="utf-8"))
                        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                    applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", zlib.crc32(f"migrate:{schema}".encode()))
    finally:
        await conn.close()
    return applied

"""Which failures of a handler a consumer waits out (retried for ever) and which make it give the
record up after a few tries (dead-lettered with the error): ``meshkit.kafka.may_pass``. The
consumer's behaviour on the real broker is tested in tests/integration/test_outbox_and_consumer.py
and tests/integration/test_batch_consumer.py."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError

from meshkit import errors
from meshkit.kafka import may_pass


@pytest.mark.parametrize("err", [
    ConnectionRefusedError(111, "connection refused"),  # the database or broker is down
    ConnectionResetError(104, "reset by peer"),
    TimeoutError(),  # a bounded call ran out of time
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.SerializationError("could not serialize access"),
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    asyncpg.exceptions.InterfaceError("pool is closing"),
    asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),  # failover
    asyncpg.exceptions.InvalidCachedStatementError("cached statement plan is invalid"),
    KafkaConnectionError(),
    NotLeaderForPartitionError(),
    errors.Unavailable("the institution's registration has not arrived yet"),
], ids=lambda e: type(e).__name__)
def test_failures_of_the_network_broker_or_database_are_waited_out(err: Exception) -> None:
    assert may_pass(err)


@pytest.mark.parametrize("err", [
    KeyError("srdi_tier"),  # a defect
    ValueError("invalid literal"),
    AttributeError("'NoneType' object has no attribute 'demand_id'"),
    asyncpg.exceptions.UniqueViolationError("duplicate key value"),  # data the schema refuses
    asyncpg.exceptions.NumericValueOutOfRangeError("bigint out of range"),
    asyncpg.exceptions.StringDataRightTruncationError("value too long"),
    asyncpg.exceptions.UndefinedColumnError("column does not exist"),
    asyncpg.exceptions.InFailedSQLTransactionError("current transaction is aborted"),  # a handler's defect
    asyncpg.exceptions._base.DataError("invalid input for query argument $1: 2147483648 (value out of int32 range)"),
    errors.NotFound("no lead with id 'x'"),
    errors.FailedPrecondition("an illegal transition"),
], ids=lambda e: type(e).__name__)
def test_any_other_failure_is_given_up_after_its_tries(err: Exception) -> None:
    assert not may_pass(err)

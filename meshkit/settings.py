"""Typed settings from the environment, failing fast with the variable's name."""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service needs. Each field is read from the upper-case variable of its name."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    service_name: str = Field(description="Name used in logs, metrics and the event `producer` header.")
    kafka_bootstrap_servers: str = Field(description="Comma-separated Kafka bootstrap servers.")
    database_url: str = Field(description="PostgreSQL URL (asyncpg form).")
    grpc_port: int = Field(ge=0, le=65535, description="Port of the gRPC server (0 = any free port).")
    grpc_host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    metrics_port: int = Field(ge=0, le=65535, description="Port of the Prometheus /metrics endpoint.")
    log_level: str = Field(default="info")
    db_pool_max: int = Field(default=10, ge=1)
    shutdown_grace_seconds: float = Field(default=5.0, gt=0)
    consumer_stall_seconds: float = Field(
        default=60.0, gt=0, description="A consumer making no progress this long is restarted."
    )
    consumer_attempts: int = Field(
        default=5, ge=1, description="Tries at a record that keeps failing for a reason that does not pass by itself "
        "(a defect, or data its handler cannot take) before it is dead-lettered with the error; failures of the "
        "network, broker or database are retried for ever.")
    kafka_request_timeout_seconds: float = Field(default=10.0, gt=0)
    outbox_relay: Literal["task", "process"] = Field(
        default="task", description="Where the outbox relay runs: a task of the service's event loop, or a child "
        "process beside it (its broker and database work then uses another core).")
    outbox_relay_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the relay process's /metrics (0 = any free port, logged).")
    operator_keys: str = Field(
        default="", description="The platform's operators (who register institutions, create subsidy funds and "
        "roadshows, file window demands, override selections): comma-separated operator_id=<SHA-256 of the key, in "
        "hex>; `python -m meshkit.operators new ID` makes one. Empty: operator calls are refused.")

    @field_validator("operator_keys")
    @classmethod
    def _operator_keys_parse(cls, value: str) -> str:
        from meshkit.operators import parse

        parse(value)  # a malformed entry fails at start, naming it
        return value


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], **overrides: object) -> S:
    """Read settings of type ``cls``; on a missing or invalid variable, exit naming it."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        lines = []
        for e in err.errors():
            name = "_".join(str(p) for p in e["loc"]).upper()
            lines.append(f"  {name}: {e['msg']}")
        sys.stderr.write("configuration error — set these environment variables:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None

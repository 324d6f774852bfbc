"""Errors raised by pure cores and services; the gRPC edge maps each to a status code."""

from __future__ import annotations

from dataclasses import dataclass

MAX_ID_CHARS = 128  # ids and idempotency keys

@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base class: a request that cannot be carried out, with a message for the caller."""


class ValidationFailed(DomainError):
    """One or more fields are wrong (gRPC INVALID_ARGUMENT with every field named)."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class NotFound(DomainError):
    """gRPC NOT_FOUND."""


class AlreadyExists(DomainError):
    """gRPC ALREADY_EXISTS: e.g. an idempotency key reused with different content."""


class FailedPrecondition(DomainError):
    """gRPC FAILED_PRECONDITION: e.g. an illegal state transition."""


class PermissionDenied(DomainError):
    """gRPC PERMISSION_DENIED."""


class Unavailable(DomainError):
    """gRPC UNAVAILABLE: not possible yet, worth retrying (e.g. an event not arrived yet)."""


class Violations:
    """Collects field violations so that every wrong field is reported at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.add(field, description)

    def require(self, field: str, value: str, max_chars: int = MAX_ID_CHARS) -> None:
        """A required id or key: not blank, at most ``max_chars`` characters."""
        if not value.strip():
            self.add(field, "is required")
        elif len(value) > max_chars:
            self.add(field, f"must be at most {max_chars} characters")

    def fields(self) -> set[str]:
        """The fields named so far."""
        return {x.field for x in self.items}

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed(self.items)


def require(field: str, value: str, max_chars: int = MAX_ID_CHARS) -> None:
    """:meth:`Violations.require` for a lone field: :class:`ValidationFailed` naming it if it is wrong."""
    v = Violations()
    v.require(field, value, max_chars)
    v.raise_if_any()

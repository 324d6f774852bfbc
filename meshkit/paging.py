"""Page tokens for List RPCs: opaque to clients, an offset inside."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from meshkit.errors import FieldViolation, ValidationFailed

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class Page:
    size: int
    offset: int

    @classmethod
    def of(cls, page_size: int, page_token: str) -> Page:
        if page_size < 0:
            raise ValidationFailed([FieldViolation("page_size", "must not be negative")])
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        offset = 0
        if page_token:
            try:
                offset = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("o:"))
            except (ValueError, UnicodeDecodeError):
                raise ValidationFailed([FieldViolation("page_token", "is not a token this service issued")]) from None
        return cls(size, offset)

    def next_token(self, fetched: int) -> str:
        """Given ``fetched`` rows of a ``size + 1`` query, the token of the next page ('' if none)."""
        if fetched <= self.size:
            return ""
        return base64.urlsafe_b64encode(f"o:{self.offset + self.size}".encode()).decode()

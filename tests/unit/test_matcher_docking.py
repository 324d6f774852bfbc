"""Institution-active docking before a matcher worker is ready to date leads."""

from __future__ import annotations

import asyncio

import pytest

from meshkit import errors
from services.matcher import handlers


async def test_a_claim_on_a_worker_that_does_not_know_the_contact_slas_yet_is_refused_as_unavailable() -> None:
    """A starting worker's gRPC server takes calls before it reports SERVING: a claim then would make
    a lead dated by the default SLA, so it is refused with UNAVAILABLE (retry), and nothing is read."""
    docking = handlers.Docking(pool=None, view=None, standing=None, open_demands=None,  # type: ignore[arg-type]
                               schema="matcher", ready=asyncio.Event())
    with pytest.raises(errors.Unavailable, match="contact SLAs"):
        await docking.claim("bank-a", "d-1", "")

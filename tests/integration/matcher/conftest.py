"""A matcher worker as a subprocess (``python -m services.matcher``) on the real broker and a
fresh database, in a consumer group of this module's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from institution_keys import InstitutionAuth, Keys
from matcher_support import MatcherProcess, matcher_env

from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc


@pytest.fixture(scope="module")
def demand_group() -> str:
    """A demand consumer group of this module's own, so no other test's commits matter."""
    return f"finmesh-matcher-t{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def matcher(database_url: str, bootstrap: str, demand_group: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MatcherProcess]:
    folder = tmp_path_factory.mktemp("matcher")
    proc = MatcherProcess(matcher_env(database_url, bootstrap, demand_group), folder / "matcher.log")
    proc.start()
    try:
        await proc.wait_serving()
        yield proc
    finally:
        code = proc.stop()
        print(f"\nmatcher exited with {code}; log tail:\n{proc.logs()[-1500:]}")


@pytest.fixture(scope="module")
async def catalog_stub(matcher: MatcherProcess, keys: Keys) -> AsyncIterator[catalog_grpc.CatalogServiceStub]:
    """CatalogService as institutions' systems call it: each request with its institution's API key."""
    async with grpc.aio.insecure_channel(matcher.address, interceptors=[InstitutionAuth(keys)]) as channel:
        yield catalog_grpc.CatalogServiceStub(channel)



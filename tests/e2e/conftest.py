"""The whole mesh as separate processes on the real broker and database, and a small
seeded world: one enterprise, four banks with one broad product each."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from institution_keys import as_institution
from rich.console import Console

from deploy.embedded.supervisor import Mesh, MeshInfo, Ports
from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from finmesh.common.v1 import finance_pb2 as fin
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.enterprise.v1 import enterprise_pb2_grpc as ent_grpc
from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.institution.v1 import institution_pb2_grpc as inst_grpc
from meshkit import apikeys, operators
from services.demand.domain import uscc_check_char

YUAN = 100  # fen


@pytest.fixture(scope="session")
def mesh(server_dir: Callable[[str], Path]) -> Iterator[Mesh]:
    """The four services, Kafka and PostgreSQL, supervised (dead processes are restarted)."""
    folder = server_dir("mesh")
    m = Mesh(folder, ports=Ports.free(), console=Console(stderr=True, force_terminal=False))
    m.start()
    try:
        m.wait_healthy(timeout=120)
        yield m
    finally:
        m.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class World:
    info: MeshInfo
    enterprise_uscc: str
    institutions: list[inst.Institution]
    products: list[catalog.Product]

    def channel(self, service: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.info.grpc_address(service))


def uscc(serial: int) -> str:
    first17 = f"91350200MA{serial:07d}"
    return first17 + uscc_check_char(first17)


BANKS = ("e2e-icbc", "e2e-ccb", "e2e-spdb", "e2e-xmbank")


@pytest.fixture(scope="session")
async def world(mesh: Mesh) -> World:
    info = mesh.info
    code = uscc(4242)
    async with grpc.aio.insecure_channel(info.grpc_address("demand")) as ch:
        await ent_grpc.EnterpriseServiceStub(ch).RegisterEnterprise(ent.RegisterEnterpriseRequest(
            enterprise=ent.Enterprise(
                uscc=code, name="Xiamen Precision Instruments Co., Ltd.", region_code="350200", city="Xiamen",
                industry_code="C40", key_industry=fin.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT,
                size=fin.ENTERPRISE_SIZE_SMALL, srdi_tier=fin.SRDI_TIER_PROVINCIAL, high_tech=True,
                founded_year=2012, annual_revenue_fen=80_000_000 * YUAN, employees=180, tax_credit_grade="A",
            )
        ))
        stub = inst_grpc.InstitutionServiceStub(ch)
        institutions, keys = [], {}
        for bank in BANKS:
            reply = await stub.RegisterInstitution(inst.RegisterInstitutionRequest(
                institution=inst.Institution(institution_id=bank, name=bank.upper(),
                                             type=inst.INSTITUTION_TYPE_BANK)
            ), metadata=((operators.HEADER, info.operator_key),))
            institutions.append(reply.institution)
            keys[bank] = ((apikeys.HEADER, reply.api_key),)
    products = []
    async with grpc.aio.insecure_channel(info.grpc_address("matcher")) as ch:
        stub = catalog_grpc.CatalogServiceStub(ch)
        for i, bank in enumerate(BANKS):  # each bank with its key, once the matcher has its registration
            reply = await as_institution(stub.UpsertProduct, catalog.UpsertProductRequest(product=catalog.Product(
                product_id=f"{bank}-working-capital", institution_id=bank, name=f"{bank} working capital loan",
                product_type=catalog.PRODUCT_TYPE_LOAN, loan_category=fin.LOAN_CATEGORY_CREDIT,
                amount_min_fen=100_000 * YUAN, amount_max_fen=50_000_000 * YUAN,
                term_min_months=6, term_max_months=60, rate_min_bps=300 + 10 * i, rate_max_bps=900,
                collateral_required=fin.COLLATERAL_NONE, status=catalog.PRODUCT_STATUS_ACTIVE,
            )), keys[bank])
            products.append(reply.product)
    return World(info, code, institutions, products)

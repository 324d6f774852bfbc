"""A realistic, deterministic demo data set: institutions and their products, enterprises, demands.

Pure: no I/O. The same seed always gives the same data, so loading it twice changes nothing.
Money is int fen, rates basis points, terms months; institution ids are valid topic-name parts
(``meshkit.topics.valid_institution_id``) and every enterprise has a valid unified social credit
code (GB 32100-2015, check character from ``services.demand.domain.uscc_check_char``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finmesh.catalog.v1 import product_pb2 as cat
from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dem
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.institution.v1 import institution_pb2 as ins
from services.demand.domain import USCC_CHARSET, uscc_check_char

DEFAULT_SEED = 20261126
YUAN = 100  # fen
WAN = 10_000 * YUAN  # 10,000 yuan, the unit Chinese lenders quote amounts in


# -- geography -------------------------------------------------------------------------------


@dataclass(frozen=True)
class City:
    name: str
    name_zh: str
    region_code: str  # 6-digit administrative division code
    weight: int
    specialties: tuple[int, ...]  # key industries the city is known for

    @property
    def province(self) -> str:
        return self.region_code[:2]


KI = fin.KeyIndustry
CITIES: tuple[City, ...] = (
    City("Mianyang", "绵阳", "510700", 8, (KI.KEY_INDUSTRY_ELECTRONIC_COMPONENTS, KI.KEY_INDUSTRY_NEV_DEVICES)),
    City("Xiamen", "厦门", "350200", 10, (KI.KEY_INDUSTRY_ELECTRONIC_COMPONENTS, KI.KEY_INDUSTRY_BIOMEDICINE)),
    City("Suzhou", "苏州", "320500", 14, (KI.KEY_INDUSTRY_BIOMEDICINE, KI.KEY_INDUSTRY_NEW_MATERIALS,
                                           KI.KEY_INDUSTRY_INTEGRATED_CIRCUITS)),
    City("Hefei", "合肥", "340100", 10, (KI.KEY_INDUSTRY_INTEGRATED_CIRCUITS, KI.KEY_INDUSTRY_NEV_DEVICES,
                                          KI.KEY_INDUSTRY_ARTIFICIAL_INTELLIGENCE)),
    City("Wuhan", "武汉", "420100", 10, (KI.KEY_INDUSTRY_INTEGRATED_CIRCUITS, KI.KEY_INDUSTRY_5G_INDUSTRIAL_INTERNET)),
    City("Chengdu", "成都", "510100", 10, (KI.KEY_INDUSTRY_AEROSPACE, KI.KEY_INDUSTRY_BIOMEDICINE)),
    City("Shenzhen", "深圳", "440300", 16, (KI.KEY_INDUSTRY_ARTIFICIAL_INTELLIGENCE,
                                             KI.KEY_INDUSTRY_5G_INDUSTRIAL_INTERNET,
                                             KI.KEY_INDUSTRY_ELECTRONIC_COMPONENTS)),
    City("Ningbo", "宁波", "330200", 8, (KI.KEY_INDUSTRY_NEW_MATERIALS, KI.KEY_INDUSTRY_PETROCHEMICAL)),
    City("Qingdao", "青岛", "370200", 7, (KI.KEY_INDUSTRY_PETROCHEMICAL, KI.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT)),
    City("Changsha", "长沙", "430100", 7, (KI.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT, KI.KEY_INDUSTRY_NEW_MATERIALS)),
)
CITY_BY_CODE = {c.region_code: c for c in CITIES}


@dataclass(frozen=True)
class Industry:
    key: int
    label: str
    word_zh: str  # what a company of the industry calls itself
    gbt4754: tuple[str, ...]  # GB/T 4754 class codes
    zones: tuple[str, ...]  # special zones it typically belongs to


INDUSTRIES: tuple[Industry, ...] = (
    Industry(KI.KEY_INDUSTRY_INTEGRATED_CIRCUITS, "integrated circuits", "微电子", ("C3973", "C3972"),
             ("advanced-manufacturing-cluster",)),
    Industry(KI.KEY_INDUSTRY_NEV_DEVICES, "NEV devices", "新能源汽车零部件", ("C3670", "C3841"),
             ("advanced-manufacturing-cluster", "industrial-green-development")),
    Industry(KI.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT, "intelligent equipment", "智能装备", ("C3491", "C3493"),
             ("advanced-manufacturing-cluster", "ships")),
    Industry(KI.KEY_INDUSTRY_PETROCHEMICAL, "petrochemical", "化工", ("C2614", "C2651"),
             ("industrial-green-development",)),
    Industry(KI.KEY_INDUSTRY_ELECTRONIC_COMPONENTS, "electronic components", "电子元件", ("C3981", "C3982"),
             ("advanced-manufacturing-cluster",)),
    Industry(KI.KEY_INDUSTRY_BIOMEDICINE, "biomedicine", "生物医药", ("C2720", "C3581"), ()),
    Industry(KI.KEY_INDUSTRY_ARTIFICIAL_INTELLIGENCE, "artificial intelligence", "智能科技", ("C3963", "I6513"),
             ("software",)),
    Industry(KI.KEY_INDUSTRY_NEW_MATERIALS, "new materials", "新材料", ("C3985", "C3099"),
             ("industrial-green-development",)),
    Industry(KI.KEY_INDUSTRY_5G_INDUSTRIAL_INTERNET, "5G + industrial internet", "通信", ("C3921", "I6319"),
             ("5g", "industrial-internet")),
    Industry(KI.KEY_INDUSTRY_AEROSPACE, "aerospace", "航空航天", ("C3742", "C3744"), ("civil-aircraft",)),
)
INDUSTRY_BY_KEY = {i.key: i for i in INDUSTRIES}


# -- institutions ----------------------------------------------------------------------------

IT = ins.InstitutionType


@dataclass(frozen=True)
class InstitutionSeed:
    institution_id: str
    name: str
    type: int
    regions: tuple[str, ...] = ()  # empty: nationwide
    signature: str = ""  # the product template it is known for


INSTITUTION_SEEDS: tuple[InstitutionSeed, ...] = (
    # National banks
    InstitutionSeed("icbc", "Industrial and Commercial Bank of China", IT.INSTITUTION_TYPE_BANK,
                    signature="business-fast-loan"),
    InstitutionSeed("ccb", "China Construction Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("abc", "Agricultural Bank of China", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("boc", "Bank of China", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("bocom", "Bank of Communications", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("cdb", "China Development Bank", IT.INSTITUTION_TYPE_BANK, signature="equipment-renewal"),
    InstitutionSeed("psbc", "Postal Savings Bank of China", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("cmb", "China Merchants Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("spdb", "Shanghai Pudong Development Bank", IT.INSTITUTION_TYPE_BANK, signature="puxin-loan"),
    InstitutionSeed("citic", "China CITIC Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("cib", "Industrial Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("cmbc", "China Minsheng Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("ceb", "China Everbright Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("hxb", "Hua Xia Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("pingan-bank", "Ping An Bank", IT.INSTITUTION_TYPE_BANK),
    InstitutionSeed("cgb", "China Guangfa Bank", IT.INSTITUTION_TYPE_BANK),
    # Branches with their own lead desks
    InstitutionSeed("icbc-xiamen", "ICBC Xiamen Branch", IT.INSTITUTION_TYPE_BANK, ("350200",), "first-loan"),
    InstitutionSeed("ccb-suzhou", "CCB Suzhou Branch", IT.INSTITUTION_TYPE_BANK, ("320500",)),
    InstitutionSeed("boc-shenzhen", "Bank of China Shenzhen Branch", IT.INSTITUTION_TYPE_BANK, ("440300",)),
    InstitutionSeed("abc-hefei", "ABC Hefei Branch", IT.INSTITUTION_TYPE_BANK, ("340100",)),
    InstitutionSeed("cmb-wuhan", "CMB Wuhan Branch", IT.INSTITUTION_TYPE_BANK, ("420100",)),
    InstitutionSeed("spdb-chengdu", "SPDB Chengdu Branch", IT.INSTITUTION_TYPE_BANK, ("510100",), "puxin-loan"),
    # City and regional banks
    InstitutionSeed("bank-of-xiamen", "Bank of Xiamen", IT.INSTITUTION_TYPE_BANK, ("35",), "renewal"),
    InstitutionSeed("bank-of-ningbo", "Bank of Ningbo", IT.INSTITUTION_TYPE_BANK, ("33",)),
    InstitutionSeed("bank-of-suzhou", "Bank of Suzhou", IT.INSTITUTION_TYPE_BANK, ("32",)),
    InstitutionSeed("bank-of-jiangsu", "Bank of Jiangsu", IT.INSTITUTION_TYPE_BANK, ("32",)),
    InstitutionSeed("huishang-bank", "Huishang Bank", IT.INSTITUTION_TYPE_BANK, ("34",)),
    InstitutionSeed("hankou-bank", "Hankou Bank", IT.INSTITUTION_TYPE_BANK, ("42",)),
    InstitutionSeed("bank-of-chengdu", "Bank of Chengdu", IT.INSTITUTION_TYPE_BANK, ("51",)),
    InstitutionSeed("mianyang-ccb", "Mianyang City Commercial Bank", IT.INSTITUTION_TYPE_BANK, ("510700",)),
    InstitutionSeed("bank-of-qingdao", "Bank of Qingdao", IT.INSTITUTION_TYPE_BANK, ("37",)),
    InstitutionSeed("bank-of-changsha", "Bank of Changsha", IT.INSTITUTION_TYPE_BANK, ("43",)),
    InstitutionSeed("szrcb", "Shenzhen Rural Commercial Bank", IT.INSTITUTION_TYPE_BANK, ("440300",)),
    InstitutionSeed("xiamen-intl-bank", "Xiamen International Bank", IT.INSTITUTION_TYPE_BANK, ("350200",)),
    # Insurers
    InstitutionSeed("picc", "PICC Property and Casualty", IT.INSTITUTION_TYPE_INSURER, signature="pilot-insurance"),
    InstitutionSeed("pingan-insurance", "Ping An Property & Casualty", IT.INSTITUTION_TYPE_INSURER),
    InstitutionSeed("cpic", "China Pacific Insurance", IT.INSTITUTION_TYPE_INSURER),
    InstitutionSeed("sinosure", "China Export & Credit Insurance", IT.INSTITUTION_TYPE_INSURER),
    # Funds
    InstitutionSeed("sme-development-fund", "National SME Development Fund", IT.INSTITUTION_TYPE_FUND),
    InstitutionSeed("shenzhen-capital", "Shenzhen Capital Group", IT.INSTITUTION_TYPE_FUND, ("44",)),
    InstitutionSeed("hefei-industry-invest", "Hefei Industry Investment Holding", IT.INSTITUTION_TYPE_FUND,
                    ("34",)),
    InstitutionSeed("suzhou-oriza", "Suzhou Oriza Holdings", IT.INSTITUTION_TYPE_FUND, ("32",)),
    InstitutionSeed("china-ic-fund", "China Integrated Circuit Industry Investment Fund", IT.INSTITUTION_TYPE_FUND),
    # Guarantors
    InstitutionSeed("national-guarantee-fund", "National Financing Guarantee Fund", IT.INSTITUTION_TYPE_GUARANTOR),
    InstitutionSeed("xiamen-guarantee", "Xiamen Financing Guarantee", IT.INSTITUTION_TYPE_GUARANTOR, ("350200",)),
    InstitutionSeed("shenzhen-hitech-guarantee", "Shenzhen High-Tech Investment Guarantee",
                    IT.INSTITUTION_TYPE_GUARANTOR, ("440300",)),
    InstitutionSeed("sichuan-guarantee", "Sichuan Financing Guarantee", IT.INSTITUTION_TYPE_GUARANTOR, ("51",)),
    # Leasing and factoring
    InstitutionSeed("icbc-leasing", "ICBC Financial Leasing", IT.INSTITUTION_TYPE_LEASING),
    InstitutionSeed("far-east-horizon", "Far East Horizon", IT.INSTITUTION_TYPE_LEASING),
    InstitutionSeed("cmb-leasing", "CMB Financial Leasing", IT.INSTITUTION_TYPE_LEASING),
    InstitutionSeed("changhong-factoring", "Sichuan Changhong Commercial Factoring", IT.INSTITUTION_TYPE_FACTOR,
                    ("510700",), "supply-chain"),
    InstitutionSeed("cmb-factoring", "CMB Commercial Factoring", IT.INSTITUTION_TYPE_FACTOR, (), "supply-chain"),
)


# -- product templates -----------------------------------------------------------------------

LC = fin.LoanCategory
CO = fin.Collateral
PT = cat.ProductType


@dataclass(frozen=True)
class Requirement:
    field: str
    operator: str
    values: tuple[str, ...]
    critical: bool = True


@dataclass(frozen=True)
class ProductTemplate:
    code: str  # becomes part of the product id
    name: str
    product_type: int
    category: int
    amount_wan: tuple[int, int]  # in units of 10,000 yuan
    term_months: tuple[int, int]
    rate_bps: tuple[int, int]
    collateral: int = CO.COLLATERAL_NONE
    industries: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    requirements: tuple[Requirement, ...] = ()
    renewal: bool = False
    fixed_rate: bool = False  # a programme rate: not varied per institution


SRDI_ANY = Requirement("enterprise.srdi_tier", "in", ("INNOVATIVE_SME", "PROVINCIAL", "LITTLE_GIANT"))
HIGH_TECH = Requirement("enterprise.high_tech", "eq", ("true",))
FIRST_TIME = Requirement("enterprise.first_time_borrower", "eq", ("true",))
GOOD_TAX = Requirement("enterprise.tax_credit_grade", "in", ("A", "B"))
THREE_YEARS = Requirement("enterprise.years_in_business", "gte", ("3",), critical=False)

TEMPLATES: dict[str, ProductTemplate] = {t.code: t for t in (
    ProductTemplate("srdi-loan", "Specialized-and-Refined Loan (专精特新贷)", PT.PRODUCT_TYPE_LOAN,
                    LC.LOAN_CATEGORY_CREDIT, (100, 3000), (6, 36), (330, 480), tags=("srdi",),
                    requirements=(SRDI_ANY,)),
    ProductTemplate("tech-achievement", "Technology Achievement Transformation Loan (科技成果转化贷)",
                    PT.PRODUCT_TYPE_LOAN, LC.LOAN_CATEGORY_PLEDGE, (50, 2000), (12, 60), (320, 450), CO.COLLATERAL_IP,
                    tags=("tech-achievement",), requirements=(HIGH_TECH,)),
    ProductTemplate("digital-transformation", "Industrial Digital Transformation Loan (产业数字化转型贷)",
                    PT.PRODUCT_TYPE_LOAN, LC.LOAN_CATEGORY_TECH_TRANSFORMATION, (200, 5000), (12, 60), (300, 420),
                    industries=(KI.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT, KI.KEY_INDUSTRY_5G_INDUSTRIAL_INTERNET,
                                KI.KEY_INDUSTRY_ARTIFICIAL_INTELLIGENCE, KI.KEY_INDUSTRY_ELECTRONIC_COMPONENTS,
                                KI.KEY_INDUSTRY_NEV_DEVICES),
                    tags=("digital-transformation",)),
    ProductTemplate("pilot-insurance", "Pilot Insurance + R&D Loan (中试险+研发贷)", PT.PRODUCT_TYPE_INSURANCE_LOAN,
                    LC.LOAN_CATEGORY_PILOT_STAGE, (100, 2000), (12, 36), (350, 500), tags=("pilot-insurance",),
                    requirements=(HIGH_TECH, THREE_YEARS)),
    ProductTemplate("first-set-insurance", "First-Set Major Equipment Insurance Loan (首台套保险贷)",
                    PT.PRODUCT_TYPE_INSURANCE_LOAN, LC.LOAN_CATEGORY_EQUIPMENT, (300, 5000), (12, 60), (340, 480),
                    CO.COLLATERAL_EQUIPMENT, industries=(KI.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT,
                                                         KI.KEY_INDUSTRY_AEROSPACE, KI.KEY_INDUSTRY_NEV_DEVICES)),
    ProductTemplate("rd-loss-insurance", "R&D Expense Loss Insurance Loan (研发费用损失险贷)",
                    PT.PRODUCT_TYPE_INSURANCE_LOAN, LC.LOAN_CATEGORY_CREDIT, (50, 1000), (12, 36), (360, 520),
                    requirements=(HIGH_TECH,)),
    ProductTemplate("equipment-loan", "Equipment and Instrument Loan (设备仪器贷)", PT.PRODUCT_TYPE_LOAN,
                    LC.LOAN_CATEGORY_EQUIPMENT, (100, 10000), (12, 84), (310, 460), CO.COLLATERAL_EQUIPMENT),
    ProductTemplate("equipment-renewal", "Equipment Renewal and Technical Transformation Loan (设备更新改造贷款)",
                    PT.PRODUCT_TYPE_LOAN, LC.LOAN_CATEGORY_TECH_TRANSFORMATION, (500, 20000), (12, 120), (175, 320),
                    tags=("tech-transformation-refinancing-175bps", "equipment-renewal"), fixed_rate=True),
    ProductTemplate("first-loan", "First Loan for Start-ups (首贷)", PT.PRODUCT_TYPE_LOAN, LC.LOAN_CATEGORY_FIRST_LOAN,
                    (30, 1000), (6, 36), (340, 480), tags=("first-loan",), requirements=(FIRST_TIME,)),
    ProductTemplate("renewal", "Loan Renewal without Repayment (无还本续贷)", PT.PRODUCT_TYPE_LOAN,
                    LC.LOAN_CATEGORY_RENEWAL, (100, 5000), (12, 36), (320, 450), tags=("renewal",), renewal=True,
                    requirements=(GOOD_TAX,)),
    ProductTemplate("pilot-stage", "Pilot-stage Loan (中试贷)", PT.PRODUCT_TYPE_LOAN, LC.LOAN_CATEGORY_PILOT_STAGE,
                    (200, 3000), (12, 60), (330, 480), tags=("pilot-stage",)),
    ProductTemplate("business-fast-loan", "ICBC Business Fast Loan (经营快贷)", PT.PRODUCT_TYPE_LOAN,
                    LC.LOAN_CATEGORY_CREDIT, (10, 1000), (1, 12), (300, 450), requirements=(GOOD_TAX,)),
    ProductTemplate("puxin-loan", "SPDB Puxin Loan (浦新贷)", PT.PRODUCT_TYPE_LOAN, LC.LOAN_CATEGORY_CREDIT,
                    (100, 5000), (6, 36), (320, 450), tags=("tech-innovation",), requirements=(HIGH_TECH,)),
    ProductTemplate("supply-chain", "Supply-chain Receivables Financing (供应链应收账款融资)",
                    PT.PRODUCT_TYPE_FACTORING, LC.LOAN_CATEGORY_RECEIVABLES, (10, 5000), (1, 12), (300, 550),
                    CO.COLLATERAL_RECEIVABLES, tags=("supply-chain",)),
    ProductTemplate("working-capital", "Working Capital Loan (流动资金贷款)", PT.PRODUCT_TYPE_LOAN,
                    LC.LOAN_CATEGORY_CREDIT, (50, 3000), (6, 36), (345, 500)),
    ProductTemplate("ip-pledge", "Intellectual Property Pledge Loan (知识产权质押贷)", PT.PRODUCT_TYPE_LOAN,
                    LC.LOAN_CATEGORY_PLEDGE, (50, 3000), (12, 36), (330, 460), CO.COLLATERAL_IP),
    ProductTemplate("property-mortgage", "Plant and Property Mortgage Loan (厂房抵押贷)", PT.PRODUCT_TYPE_LOAN,
                    LC.LOAN_CATEGORY_MORTGAGE, (300, 20000), (12, 120), (310, 430), CO.COLLATERAL_PROPERTY),
    ProductTemplate("guarantee", "SME Financing Guarantee (中小企业融资担保)", PT.PRODUCT_TYPE_GUARANTEE,
                    LC.LOAN_CATEGORY_GUARANTEED, (50, 2000), (12, 36), (400, 600)),
    ProductTemplate("srdi-guarantee", "SRDI Batch Guarantee (专精特新批量担保)", PT.PRODUCT_TYPE_GUARANTEE,
                    LC.LOAN_CATEGORY_GUARANTEED, (100, 3000), (12, 36), (380, 550), requirements=(SRDI_ANY,)),
    ProductTemplate("equipment-lease", "Equipment Finance Lease (设备融资租赁)", PT.PRODUCT_TYPE_LEASE,
                    LC.LOAN_CATEGORY_EQUIPMENT, (200, 10000), (24, 60), (450, 650), CO.COLLATERAL_EQUIPMENT),
    ProductTemplate("sale-leaseback", "Sale-and-Leaseback for Production Lines (直租回租)", PT.PRODUCT_TYPE_LEASE,
                    LC.LOAN_CATEGORY_TECH_TRANSFORMATION, (500, 20000), (24, 72), (480, 700),
                    CO.COLLATERAL_EQUIPMENT),
    ProductTemplate("invest-loan", "Investment-Loan Linkage (投贷联动)", PT.PRODUCT_TYPE_EQUITY,
                    LC.LOAN_CATEGORY_CREDIT, (500, 10000), (24, 60), (300, 600), tags=("srdi",),
                    requirements=(SRDI_ANY, HIGH_TECH)),
    ProductTemplate("growth-equity", "SRDI Growth Equity (专精特新成长基金)", PT.PRODUCT_TYPE_EQUITY,
                    LC.LOAN_CATEGORY_PILOT_STAGE, (1000, 30000), (36, 84), (0, 800), tags=("srdi", "roadshow"),
                    requirements=(Requirement("enterprise.srdi_tier", "in", ("PROVINCIAL", "LITTLE_GIANT")),)),
    ProductTemplate("receivable-factoring", "Receivables Factoring (应收账款保理)", PT.PRODUCT_TYPE_FACTORING,
                    LC.LOAN_CATEGORY_RECEIVABLES, (20, 3000), (1, 12), (350, 650), CO.COLLATERAL_RECEIVABLES,
                    tags=("supply-chain",)),
    ProductTemplate("order-financing", "Purchase-Order Financing (订单融资)", PT.PRODUCT_TYPE_FACTORING,
                    LC.LOAN_CATEGORY_RECEIVABLES, (50, 2000), (3, 12), (380, 600), CO.COLLATERAL_RECEIVABLES,
                    tags=("supply-chain",)),
)}

# What each type of institution offers (its signature product is added first).
OFFERINGS: dict[int, tuple[str, ...]] = {
    IT.INSTITUTION_TYPE_BANK: ("srdi-loan", "tech-achievement", "digital-transformation", "equipment-loan",
                               "equipment-renewal", "first-loan", "renewal", "pilot-stage", "supply-chain",
                               "working-capital", "ip-pledge", "property-mortgage"),
    IT.INSTITUTION_TYPE_INSURER: ("pilot-insurance", "first-set-insurance", "rd-loss-insurance"),
    IT.INSTITUTION_TYPE_FUND: ("invest-loan", "growth-equity", "pilot-stage"),
    IT.INSTITUTION_TYPE_GUARANTOR: ("guarantee", "srdi-guarantee", "first-loan"),
    IT.INSTITUTION_TYPE_LEASING: ("equipment-lease", "sale-leaseback", "equipment-loan"),
    IT.INSTITUTION_TYPE_FACTOR: ("receivable-factoring", "supply-chain", "order-financing"),
}


# -- the data set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    institutions: tuple[ins.Institution, ...]
    products: tuple[cat.Product, ...]
    enterprises: tuple[ent.Enterprise, ...]
    # Institutions whose own systems publish their products on Kafka (the others use gRPC).
    kafka_publishers: frozenset[str]

    def products_of(self, institution_id: str) -> list[cat.Product]:
        return [p for p in self.products if p.institution_id == institution_id]


def build(seed: int = DEFAULT_SEED, *, enterprises: int = 1000) -> Dataset:
    """The demo data set for ``seed``: about 50 institutions with 2-6 products each, and ``enterprises``."""
    rng = random.Random(seed)
    institutions = tuple(_institution(s) for s in INSTITUTION_SEEDS)
    products = tuple(p for s in INSTITUTION_SEEDS for p in _products(rng, s))
    publishers = frozenset(s.institution_id for i, s in enumerate(INSTITUTION_SEEDS)
                           if s.type != IT.INSTITUTION_TYPE_BANK or i % 5 == 4)
    return Dataset(institutions, products, _enterprises(rng, enterprises), publishers)


def _institution(s: InstitutionSeed) -> ins.Institution:
    sla = {IT.INSTITUTION_TYPE_BANK: 72, IT.INSTITUTION_TYPE_FUND: 120}.get(s.type, 96)
    return ins.Institution(institution_id=s.institution_id, name=s.name, type=s.type,
                           regions_served=list(s.regions), contact_sla_hours=sla)


def _round_wan(fen: int) -> int:
    return max(WAN, round(fen / WAN) * WAN)


def _products(rng: random.Random, s: InstitutionSeed) -> list[cat.Product]:
    offered = list(OFFERINGS[s.type])
    count = min(len(offered), rng.randint(3, 6))
    codes = ([s.signature] if s.signature else []) + [c for c in rng.sample(offered, count) if c != s.signature]
    out = []
    for code in codes[:6]:
        t = TEMPLATES[code]
        scale = rng.choice((0.5, 0.8, 1.0, 1.0, 1.5, 2.0))
        amount_min = _round_wan(int(t.amount_wan[0] * WAN * rng.choice((0.5, 1.0, 1.0, 2.0))))
        amount_max = max(amount_min * 2, _round_wan(int(t.amount_wan[1] * WAN * scale)))
        shift = 0 if t.fixed_rate else rng.randrange(-30, 35, 5)
        rate_min = max(0, t.rate_bps[0] + shift)
        rate_max = max(rate_min + 25, t.rate_bps[1] + shift + rng.randrange(0, 40, 5))
        p = cat.Product(
            product_id=f"{s.institution_id}-{code}", institution_id=s.institution_id,
            name=t.name if code in ("business-fast-loan", "puxin-loan") else f"{s.name} {t.name}",
            product_type=t.product_type, loan_category=t.category,
            amount_min_fen=amount_min, amount_max_fen=amount_max,
            term_min_months=t.term_months[0], term_max_months=t.term_months[1],
            rate_min_bps=rate_min, rate_max_bps=rate_max, collateral_required=t.collateral,
            industries=list(t.industries), regions=list(s.regions), programme_tags=list(t.tags),
            renewal_support=t.renewal, status=cat.PRODUCT_STATUS_ACTIVE,
        )
        for r in t.requirements:
            p.requirements.add(field=r.field, operator=r.operator, values=list(r.values), critical=r.critical)
        out.append(p)
    return out


# -- enterprises -----------------------------------------------------------------------------

SR = fin.SrdiTier
SZ = fin.EnterpriseSize
BRANDS_ZH = ("宏泰", "华芯", "中科", "瑞丰", "恒达", "天成", "鼎盛", "博远", "联创", "新锐", "汇智", "长青", "晶合",
             "海川", "凯盛", "启明", "精工", "云帆", "星河", "卓越", "国泰", "振华", "蓝海", "金桥", "安捷", "永信",
             "睿德", "富林", "创新", "盛世")
SIZES = ((SZ.ENTERPRISE_SIZE_MICRO, 25), (SZ.ENTERPRISE_SIZE_SMALL, 40), (SZ.ENTERPRISE_SIZE_MEDIUM, 25),
         (SZ.ENTERPRISE_SIZE_LARGE, 10))
EMPLOYEES = {SZ.ENTERPRISE_SIZE_MICRO: (3, 19), SZ.ENTERPRISE_SIZE_SMALL: (20, 299),
             SZ.ENTERPRISE_SIZE_MEDIUM: (300, 999), SZ.ENTERPRISE_SIZE_LARGE: (1000, 8000)}
REVENUE_WAN = {SZ.ENTERPRISE_SIZE_MICRO: (50, 300), SZ.ENTERPRISE_SIZE_SMALL: (300, 2000),
               SZ.ENTERPRISE_SIZE_MEDIUM: (2000, 40000), SZ.ENTERPRISE_SIZE_LARGE: (40000, 500000)}
FOUNDED = {SZ.ENTERPRISE_SIZE_MICRO: (2012, 2024), SZ.ENTERPRISE_SIZE_SMALL: (2005, 2023),
           SZ.ENTERPRISE_SIZE_MEDIUM: (1998, 2020), SZ.ENTERPRISE_SIZE_LARGE: (1985, 2012)}
TIERS = ((SR.SRDI_TIER_NONE, 45), (SR.SRDI_TIER_INNOVATIVE_SME, 25), (SR.SRDI_TIER_PROVINCIAL, 20),
         (SR.SRDI_TIER_LITTLE_GIANT, 10))
TAX_GRADES = (("A", 40), ("B", 35), ("M", 15), ("C", 8), ("D", 2))


def _weighted(rng: random.Random, pairs: Sequence[tuple[Any, int]]) -> Any:
    items, weights = zip(*pairs, strict=True)
    return rng.choices(items, weights)[0]


def make_uscc(region_code: str, body: str) -> str:
    """A unified social credit code: registration authority 9 (market regulation), type 1 (enterprise),
    the 6-digit region, a 9-character organisation code ``body``, and the check character."""
    first17 = f"91{region_code}{body}"
    return first17 + uscc_check_char(first17)


def _enterprises(rng: random.Random, count: int) -> tuple[ent.Enterprise, ...]:
    seen: set[str] = set()
    out = []
    for n in range(count):
        # Cover every city and industry before drawing by weight.
        city = CITIES[n] if n < len(CITIES) else _weighted(rng, [(c, c.weight) for c in CITIES])
        if n < len(INDUSTRIES):
            industry = INDUSTRIES[n]
        elif rng.random() < 0.55:
            industry = INDUSTRY_BY_KEY[rng.choice(city.specialties)]
        else:
            industry = rng.choice(INDUSTRIES)
        size = _weighted(rng, SIZES)
        tier = TIERS[n % len(TIERS)][0] if n < len(TIERS) else _weighted(rng, TIERS)
        if size == SZ.ENTERPRISE_SIZE_LARGE and tier != SR.SRDI_TIER_NONE:
            tier = SR.SRDI_TIER_NONE  # SRDI status is for SMEs
        while True:
            body = "".join(rng.choice("0123456789") for _ in range(2)) + "".join(rng.choice(USCC_CHARSET)
                                                                                for _ in range(7))
            uscc = make_uscc(city.region_code, body)
            if uscc not in seen:
                seen.add(uscc)
                break
        name = f"{city.name_zh}{rng.choice(BRANDS_ZH)}{industry.word_zh}{rng.choice(('', '科技', '股份'))}有限公司"
        first, last = FOUNDED[size]
        zones = [z for z in industry.zones if rng.random() < 0.4]
        lo, hi = REVENUE_WAN[size]
        out.append(ent.Enterprise(
            uscc=uscc, name=name, region_code=city.region_code,
            city=city.name, industry_code=rng.choice(industry.gbt4754), key_industry=industry.key, size=size,
            srdi_tier=tier, high_tech=rng.random() < (0.8 if tier >= SR.SRDI_TIER_PROVINCIAL else 0.4),
            founded_year=rng.randint(first, last), annual_revenue_fen=rng.randint(lo, hi) * WAN,
            employees=rng.randint(*EMPLOYEES[size]), tax_credit_grade=_weighted(rng, TAX_GRADES),
            has_borrowed=rng.random() < 0.7, special_zones=zones,
        ))
    return tuple(out)


# -- demands ---------------------------------------------------------------------------------

PU = dem.Purpose
PURPOSE_OF = {
    LC.LOAN_CATEGORY_EQUIPMENT: (PU.PURPOSE_EQUIPMENT_RENEWAL,),
    LC.LOAN_CATEGORY_TECH_TRANSFORMATION: (PU.PURPOSE_TECHNOLOGY_UPGRADE, PU.PURPOSE_EQUIPMENT_RENEWAL),
    LC.LOAN_CATEGORY_PILOT_STAGE: (PU.PURPOSE_RESEARCH_AND_DEVELOPMENT,),
    LC.LOAN_CATEGORY_RECEIVABLES: (PU.PURPOSE_RECEIVABLES,),
    LC.LOAN_CATEGORY_PLEDGE: (PU.PURPOSE_RESEARCH_AND_DEVELOPMENT, PU.PURPOSE_TECHNOLOGY_UPGRADE),
}
GENERAL_PURPOSES = (PU.PURPOSE_WORKING_CAPITAL, PU.PURPOSE_MARKET_EXPANSION, PU.PURPOSE_WORKING_CAPITAL)
STANDARD_TERMS = (3, 6, 12, 18, 24, 36, 48, 60, 84, 120)
TIER_NAMES = {SR.SRDI_TIER_NONE: "NONE", SR.SRDI_TIER_INNOVATIVE_SME: "INNOVATIVE_SME",
              SR.SRDI_TIER_PROVINCIAL: "PROVINCIAL", SR.SRDI_TIER_LITTLE_GIANT: "LITTLE_GIANT"}


def enterprise_value(e: ent.Enterprise, field: str, *, year: int = 2026) -> str:
    """The value a requirement's ``field`` names, as a string (as products state their values)."""
    return {
        "enterprise.srdi_tier": TIER_NAMES.get(e.srdi_tier, ""),
        "enterprise.high_tech": str(e.high_tech).lower(),
        "enterprise.first_time_borrower": str(not e.has_borrowed).lower(),
        "enterprise.tax_credit_grade": e.tax_credit_grade,
        "enterprise.years_in_business": str(year - e.founded_year),
    }.get(field, "")


def fits(e: ent.Enterprise, p: cat.Product) -> bool:
    """Whether ``e`` is in ``p``'s audience: region, industry and critical requirements."""
    if p.regions and not any(e.region_code.startswith(r) for r in p.regions):
        return False
    if p.industries and e.key_industry not in p.industries:
        return False
    for r in p.requirements:
        if not r.critical:
            continue
        value = enterprise_value(e, r.field)
        ok = {"eq": lambda v, r=r: v == r.values[0], "in": lambda v, r=r: v in r.values,
              "gte": lambda v, r=r: v.isdigit() and int(v) >= int(r.values[0])}.get(r.operator, lambda v: True)
        if not ok(value):
            return False
    return True


class DemandGenerator:
    """Plausible demands, most of them shaped after a product the enterprise qualifies for."""

    def __init__(self, dataset: Dataset, seed: int = DEFAULT_SEED, *, targeted_share: float = 0.85) -> None:
        self.dataset = dataset
        self.rng = random.Random(seed)
        self.targeted_share = targeted_share
        self._fitting: dict[str, list[cat.Product]] = {}

    def fitting(self, e: ent.Enterprise) -> list[cat.Product]:
        if e.uscc not in self._fitting:
            self._fitting[e.uscc] = [p for p in self.dataset.products if fits(e, p)]
        return self._fitting[e.uscc]

    def next(self) -> dem.DemandRequest:
        rng = self.rng
        e = rng.choice(self.dataset.enterprises)
        candidates = self.fitting(e)
        if candidates and rng.random() < self.targeted_share:
            return self._targeted(e, rng.choice(candidates))
        return self._free(e)

    def _targeted(self, e: ent.Enterprise, p: cat.Product) -> dem.DemandRequest:
        rng = self.rng
        lo, hi = p.amount_min_fen // WAN, p.amount_max_fen // WAN
        # Smaller sums are asked for more often than large ones.
        amount = int(lo + (hi - lo) * rng.random() ** 2) * WAN
        amount = max(p.amount_min_fen, min(p.amount_max_fen, _round_wan(amount)))
        terms = [t for t in STANDARD_TERMS if p.term_min_months <= t <= p.term_max_months]
        term = rng.choice(terms) if terms else p.term_min_months
        if rng.random() < 0.7:
            max_rate = p.rate_max_bps + rng.randrange(0, 100, 5)
        else:
            max_rate = rng.randrange(p.rate_min_bps, p.rate_max_bps + 1, 5)
        collateral = [] if p.collateral_required in (CO.COLLATERAL_UNSPECIFIED, CO.COLLATERAL_NONE) \
            else [p.collateral_required]
        if rng.random() < 0.3 and CO.COLLATERAL_GUARANTEE not in collateral:
            collateral.append(CO.COLLATERAL_GUARANTEE)
        return dem.DemandRequest(
            enterprise_uscc=e.uscc, amount_fen=amount,
            least_acceptable_amount_fen=_round_wan(amount * 6 // 10) if rng.random() < 0.4 else 0,
            term_months=term, max_rate_bps=max_rate,
            loan_category=p.loan_category if rng.random() < 0.5 else LC.LOAN_CATEGORY_UNSPECIFIED,
            purpose=rng.choice(PURPOSE_OF.get(p.loan_category, GENERAL_PURPOSES)),
            collateral_offered=collateral or [CO.COLLATERAL_NONE], first_loan=not e.has_borrowed,
            consent_to_share=True, docking_mode=dem.DOCKING_MODE_INTELLIGENT,
        )

    def _free(self, e: ent.Enterprise) -> dem.DemandRequest:
        """A demand shaped by the enterprise alone; it may fit nothing."""
        rng = self.rng
        revenue_wan = max(50, e.annual_revenue_fen // WAN)
        amount = _round_wan(int(revenue_wan * rng.uniform(0.05, 0.6)) * WAN)
        category = rng.choice([c for c in LC.values() if c != LC.LOAN_CATEGORY_UNSPECIFIED]
                              + [LC.LOAN_CATEGORY_UNSPECIFIED] * 3)
        return dem.DemandRequest(
            enterprise_uscc=e.uscc, amount_fen=amount, term_months=rng.choice(STANDARD_TERMS),
            max_rate_bps=rng.randrange(250, 520, 5), loan_category=category,
            purpose=rng.choice(PURPOSE_OF.get(category, GENERAL_PURPOSES)),
            collateral_offered=[rng.choice((CO.COLLATERAL_NONE, CO.COLLATERAL_PROPERTY, CO.COLLATERAL_GUARANTEE))],
            first_loan=not e.has_borrowed, consent_to_share=True, docking_mode=dem.DOCKING_MODE_INTELLIGENT,
        )

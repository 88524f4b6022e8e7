"""`escrow bench closure`: a merchant with many paid cards closes; freeze, plan and execution are timed.

Setup (not measured) writes, in chunks of ``CHUNK`` cards per transaction so memory stays bounded: a bank, a
merchant with an active escrow account, a few plans, consumers (about two cards for every three consumers), the
cards (active and paid), their ledger accounts (opened in bulk, with the kinds of ``ledger.service.ACCOUNT_KINDS``) and
their ``card_paid`` entries through ``ledger.post_many`` — the journal is written only by the ledger's functions,
so it balances and ``verify`` stays green. One sessions card in five has had a few sessions released
(``release`` entries and confirmed services), so ``merchant_payable`` holds the merchant's unpaid share. The
first-compensation fund gets a bank account and a contribution (half the demand the cards may put on it, so
with ratio custody it pays pro rata and owes the rest).

With ``ratio_bp`` below 10,000, three cards in four were sold at that custody ratio (the fourth in the
merchant's first year, at full custody): their value outside custody is then paid by set-off from
``merchant_payable`` and by the fund. At 10,000 (the default) every card is in full custody.

Then, each step timed on its own: the regulator orders the closure (frozen at once), ``start`` computes and
fixes the plan, ``settle`` executes it batch by batch; finally ``verify_database`` checks the whole ledger.
"""

import resource
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from escrow import ledger
from escrow.auth.tokens import Principal, issue_token
from escrow.cards import service as cards
from escrow.cards.pricing import CardMoney, protected_part_of_price, split, unit_value
from escrow.closures import service
from escrow.closures.schemas import ClosureCreate
from escrow.config import Settings
from escrow.fund import service as fund
from escrow.fund.schemas import ContributionCreate, FundBankAccount
from escrow.kit.clock import business_date, utcnow
from escrow.kit.crypto import Keyring, mask_account_number, mask_phone
from escrow.kit.ids import new_id
from escrow.kit.money import Money
from escrow.kit.uscc import _organisation_check_character as organisation_check_character
from escrow.kit.uscc import with_check_character
from escrow.ledger.integrity import verify_database
from escrow.ledger.service import ACCOUNT_KINDS
from escrow.models import Bank, Card, EscrowAccount, Merchant, Plan

CHUNK = 5_000  # cards per setup transaction (rows per bulk INSERT, entries per post_many call)
FULL = 10_000  # basis points: full custody
TARGET_SECONDS = 60.0  # plan + execution for 100,000 cards (issue #6)
# (name, kind, price fen, units): sessions plans count sessions, the stored-value plan its face value in fen
PLANS = (
    ("10 sessions", "sessions", 100_000, 10),
    ("20 sessions", "sessions", 200_000, 20),
    ("3,300 yuan of credit", "stored_value", 300_000, 330_000),
)

Progress = Callable[[int, int], None]


@dataclass
class Step:
    name: str
    items: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


@dataclass
class Setup:
    """What the setup wrote (and what it expects the closure to find)."""

    merchant_id: str
    escrow_account_id: str
    cards: int = 0
    consumers: int = 0
    released_cards: int = 0
    entries: int = 0
    merchant_payable: int = 0  # fen: the protected part of every release
    outside_custody: int = 0  # fen: the cards' unused value not in custody
    fund_contribution: int = 0
    seconds: float = 0.0


@dataclass
class ClosureBenchResult:
    cards: int
    ratio_bp: int
    batch: int
    setup: Setup
    closure_id: str
    status: str
    totals: service.Totals
    steps: list[Step] = field(default_factory=list)
    peak_rss_kib: int = 0
    verify_ok: bool | None = None  # None: not verified
    verify_seconds: float = 0.0
    verify_entries: int = 0
    failed_checks: list[str] = field(default_factory=list)

    @property
    def measured_seconds(self) -> float:
        """Plan + execution: what the target is about."""
        return sum(step.seconds for step in self.steps if step.name in ("plan", "execution"))

    @property
    def ok(self) -> bool:
        return self.status == "settled" and self.totals.done == self.totals.items and self.verify_ok is not False


def _uscc(serial: int) -> str:
    organisation = f"{serial % 10**8:08d}"
    return with_check_character("91310000" + organisation + organisation_check_character(organisation))


def peak_rss_kib() -> int:
    """This process's peak resident set size (Linux reports KiB; the database server is not included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- setup ---------------------------------------------------------------------------------------------------


async def _parties(session: AsyncSession, keyring: Keyring, ratio_bp: int, today: date) -> tuple[Setup, list[Plan]]:
    run = secrets.token_hex(3).upper()
    bank = Bank(
        id=new_id("bnk"),
        name=f"Bench custodian {run}",
        code=f"BC{run}",
        signing_algorithm="hmac-sha256",
        signing_secret_enc=keyring.encrypt(secrets.token_urlsafe(32), "banks.signing_secret"),
    )
    fund_bank = Bank(
        id=new_id("bnk"),
        name=f"Bench fund bank {run}",
        code=f"BF{run}",
        signing_algorithm="hmac-sha256",
        signing_secret_enc=keyring.encrypt(secrets.token_urlsafe(32), "banks.signing_secret"),
    )
    merchant = Merchant(
        id=new_id("mer"),
        name=f"Bench gym {run}",
        category="other",
        uscc=_uscc(secrets.randbelow(10**8)),
        credit_rating="A",
        settlement_account_enc=keyring.encrypt("6222021234567890123", "merchants.settlement_account"),
        settlement_account_masked=mask_account_number("6222021234567890123"),
        status="active",
        custody_model="full" if ratio_bp >= FULL else "ratio",
        opened_on=today - timedelta(days=800),
    )
    session.add_all([bank, fund_bank, merchant])
    await session.flush()
    account = EscrowAccount(
        id=new_id("esc"),
        merchant_id=merchant.id,
        bank_id=bank.id,
        status="active",
        bank_account_enc=keyring.encrypt("330104000123456789", "escrow_accounts.bank_account"),
        bank_account_masked=mask_account_number("330104000123456789"),
        activated_at=utcnow(),
    )
    plans = [
        Plan(
            id=new_id("pln"),
            merchant_id=merchant.id,
            name=name,
            kind=kind,
            price=price,
            units=units,
            list_unit_price=price // units + 1_000 if kind == "sessions" else None,
            validity_days=365,
        )
        for name, kind, price, units in PLANS
    ]
    session.add(account)
    session.add_all(plans)
    await session.flush()
    await ledger.open_book(session, account.id)
    await fund.set_bank_account(
        session, keyring, FundBankAccount(bank_id=fund_bank.id, bank_account_number="6222111122223333")
    )
    return Setup(merchant.id, account.id), plans


_INSERT_CONSUMERS = text(
    "INSERT INTO consumers (id, phone_hash, phone_masked)"
    " SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:hashes AS text[]), CAST(:masked AS text[]))"
)
_INSERT_LINKS = text(
    "INSERT INTO consumer_links (consumer_id, merchant_id) SELECT id, :merchant FROM unnest(CAST(:ids AS text[])) id"
)
_INSERT_CARDS = text(
    """
INSERT INTO cards (id, merchant_id, escrow_account_id, plan_id, consumer_id, kind, status, price, units_total,
                   units_used, custody_ratio_bp, protected_paid, consumed, released, refunded, protected_out,
                   payment_reference, deposit_transaction_id, paid_at, starts_on, valid_until, days_settled)
SELECT u.id, :merchant, :account, u.plan_id, u.consumer_id, u.kind, 'active', u.price, u.units_total, u.units_used,
       u.ratio, u.protected_paid, u.consumed, u.consumed, 0, u.protected_out, u.reference, u.transaction_id, now(),
       CAST(:starts_on AS date), CAST(:valid_until AS date), 0
  FROM unnest(CAST(:ids AS text[]), CAST(:plan_ids AS text[]), CAST(:consumer_ids AS text[]), CAST(:kinds AS text[]),
              CAST(:prices AS bigint[]), CAST(:units_total AS bigint[]), CAST(:units_used AS bigint[]),
              CAST(:ratios AS int[]), CAST(:protected_paid AS bigint[]), CAST(:consumed AS bigint[]),
              CAST(:protected_out AS bigint[]), CAST(:references AS text[]), CAST(:transaction_ids AS text[]))
       AS u(id, plan_id, consumer_id, kind, price, units_total, units_used, ratio, protected_paid, consumed,
            protected_out, reference, transaction_id)
"""
)
_OPEN_ACCOUNTS = text(
    "INSERT INTO ledger_accounts (escrow_account_id, code, normal_side, non_negative)"
    " SELECT :book, code, :side, :non_negative FROM unnest(CAST(:codes AS text[])) code"
    " ON CONFLICT (escrow_account_id, code) DO NOTHING"
)
_INSERT_CONSUMPTIONS = text(
    """
INSERT INTO consumptions (id, card_id, escrow_account_id, units, amount, protected_amount, status, note,
                          resolved_at, resolved_by)
SELECT u.id, u.card_id, :account, u.units, u.amount, u.protected, 'confirmed', 'bench', now(), 'bench'
  FROM unnest(CAST(:ids AS text[]), CAST(:card_ids AS text[]), CAST(:units AS bigint[]), CAST(:amounts AS bigint[]),
              CAST(:protected AS bigint[])) AS u(id, card_id, units, amount, protected)
"""
)


async def _open_accounts(session: AsyncSession, book: str, codes: list[str]) -> None:
    """Ledger accounts in one statement, of the kind their code prefix gives (as ``ledger.open_account`` would)."""
    by_kind: dict[str, list[str]] = {}
    for code in codes:
        by_kind.setdefault(code.split(":", 1)[0], []).append(code)
    for kind, kind_codes in by_kind.items():
        side, non_negative = ACCOUNT_KINDS[kind]
        await session.execute(
            _OPEN_ACCOUNTS, {"book": book, "side": side, "non_negative": non_negative, "codes": kind_codes}
        )


async def _cards_chunk(
    session: AsyncSession,
    setup: Setup,
    plans: list[Plan],
    first: int,
    count: int,
    ratio_bp: int,
    today: date,
    consumer_ids: list[str],
    bank_id: str,
    run: str,
) -> None:
    """Cards ``first`` … ``first + count - 1``: rows, ledger accounts, card_paid and release entries."""
    book = setup.escrow_account_id
    rows: dict[str, list] = {
        k: []
        for k in (
            "ids",
            "plan_ids",
            "consumer_ids",
            "kinds",
            "prices",
            "units_total",
            "units_used",
            "ratios",
            "protected_paid",
            "consumed",
            "protected_out",
            "references",
            "transaction_ids",
        )
    }
    services: dict[str, list] = {k: [] for k in ("ids", "card_ids", "units", "amounts", "protected")}
    paid: list[ledger.Entry] = []
    releases: list[ledger.Entry] = []
    codes: list[str] = []
    for i in range(first, first + count):
        plan = plans[i % len(plans)]
        ratio = FULL if i % 4 == 0 else ratio_bp
        protected_paid = protected_part_of_price(plan.price, ratio)
        card_id = new_id("card")
        transaction_id = f"BENCH-{run}-{i}"
        units_used = consumed = protected_out = 0
        if plan.kind == "sessions" and i % 5 == 0:  # a few sessions used and released
            units_used = 1 + (i // 5) % (plan.units - 1)
            consumed = unit_value(plan.price, plan.units, 0, units_used, 0)
            protected_out, unprotected = split(CardMoney(plan.price, ratio, protected_paid, 0, 0), consumed)
            consumption_id = new_id("csm")
            for key, value in zip(
                services, (consumption_id, card_id, units_used, consumed, protected_out), strict=True
            ):
                services[key].append(value)
            card = Card(id=card_id)
            releases.append(
                ledger.Entry(
                    book,
                    "release",
                    cards.release_legs(card, protected_out, unprotected),
                    refs={"card_id": card_id, "consumption_id": consumption_id},
                    principal="system:bench",
                )
            )
            setup.merchant_payable += protected_out
            setup.released_cards += 1
        setup.outside_custody += (plan.price - protected_paid) - (consumed - protected_out)
        values = (
            card_id,
            plan.id,
            consumer_ids[i % len(consumer_ids)],
            plan.kind,
            plan.price,
            plan.units,
            units_used,
            ratio,
            protected_paid,
            consumed,
            protected_out,
            f"PE{secrets.randbelow(10**18):018d}",
            transaction_id,
        )
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)
        # entry 1 of domain.md §4, as cards._post_paid writes it
        legs: list[ledger.Leg] = []
        codes.append(cards.card_code(card_id))
        if protected_paid:
            legs += ledger.transfer("custody_cash", cards.card_code(card_id), protected_paid)
        if plan.price > protected_paid:
            codes.append(cards.unprotected_code(card_id))
            legs += ledger.transfer("merchant_obligation", cards.unprotected_code(card_id), plan.price - protected_paid)
        paid.append(
            ledger.Entry(
                book,
                "card_paid",
                legs,
                refs={"card_id": card_id, "bank_transaction_id": transaction_id, "paid_by": "deposit"},
                principal=bank_id,
                idempotency_ref=cards.payment_ref("deposit", transaction_id),
            )
        )
    await session.execute(
        _INSERT_CARDS,
        {
            "merchant": setup.merchant_id,
            "account": book,
            "starts_on": today - timedelta(days=30),
            "valid_until": today + timedelta(days=335),
            **rows,
        },
    )
    await _open_accounts(session, book, codes)
    await ledger.post_many(session, paid)
    if releases:  # released later, in another transaction, as services are
        await session.commit()
        await ledger.post_many(session, releases)
        await session.execute(_INSERT_CONSUMPTIONS, {"account": book, **services})
    await session.commit()
    setup.entries += len(paid) + len(releases)
    setup.cards += count


async def build(
    sessionmaker: async_sessionmaker,
    settings: Settings,
    principal: Principal,
    *,
    cards_count: int,
    ratio_bp: int,
    progress: Progress | None = None,
) -> Setup:
    """The merchant, its consumers and ``cards_count`` paid cards, and a funded fund (see the module docstring)."""
    started = time.perf_counter()
    keyring = Keyring(secrets.token_bytes(32))  # the bench never reads back what it encrypts
    today = business_date(utcnow(), settings.business_timezone)
    run = secrets.token_hex(4).upper()
    async with sessionmaker() as session:
        setup, plans = await _parties(session, keyring, ratio_bp, today)
        await session.commit()
        bank_id = await session.scalar(select(EscrowAccount.bank_id).where(EscrowAccount.id == setup.escrow_account_id))
    consumers = max(1, cards_count * 2 // 3)
    phone_base = secrets.randbelow(10**8 - consumers)
    consumer_ids: list[str] = []
    async with sessionmaker() as session:
        for first in range(0, consumers, CHUNK):
            ids = [new_id("con") for _ in range(first, min(first + CHUNK, consumers))]
            consumer_ids += ids
            phones = [f"139{(phone_base + n) % 10**8:08d}" for n in range(first, first + len(ids))]
            await session.execute(
                _INSERT_CONSUMERS,
                {
                    "ids": ids,
                    "hashes": [keyring.lookup_hash(p) for p in phones],
                    "masked": [mask_phone(p) for p in phones],
                },
            )
            await session.execute(_INSERT_LINKS, {"ids": ids, "merchant": setup.merchant_id})
            await session.commit()
    setup.consumers = consumers
    if progress is not None:
        progress(0, cards_count)
    async with sessionmaker() as session:
        for first in range(0, cards_count, CHUNK):
            count = min(CHUNK, cards_count - first)
            await _cards_chunk(session, setup, plans, first, count, ratio_bp, today, consumer_ids, bank_id, run)
            if progress is not None:
                progress(setup.cards, cards_count)
    # The fund: half of what the cards' value outside custody may ask of it once set-off has paid its part.
    demand = max(0, setup.outside_custody - setup.merchant_payable)
    setup.fund_contribution = max(10_000_000, demand // 2)
    async with sessionmaker() as session:
        await fund.contribute(
            session,
            principal,
            ContributionCreate(
                source_kind="insurer",
                source_name="Bench insurer",
                amount=Money(amount=setup.fund_contribution),
                bank_transaction_id=f"BENCH-FUND-{run}",
            ),
            settings.jobs_batch_size,
        )
        await session.commit()
    setup.entries += 1
    setup.seconds = time.perf_counter() - started
    return setup


async def regulator(sessionmaker: async_sessionmaker) -> Principal:
    async with sessionmaker() as session:
        token, _ = await issue_token(session, "regulator", "closure bench")
        await session.commit()
    return Principal(token.principal_id, "regulator", token.id)


# --- the measured steps --------------------------------------------------------------------------------------


async def run(
    engine: AsyncEngine,
    settings: Settings,
    *,
    cards: int,
    ratio_bp: int = FULL,
    batch: int = 1000,
    verify: bool = True,
    setup_progress: Progress | None = None,
    progress: Progress | None = None,
) -> ClosureBenchResult:
    """Set up, then time the freeze, the plan and the execution (and, apart, the ledger's verification)."""
    if cards < 1:
        raise ValueError("cards must be at least 1")
    if not 0 <= ratio_bp <= FULL:
        raise ValueError("ratio_bp must be between 0 and 10000")
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
    principal = await regulator(sessionmaker)
    setup = await build(
        sessionmaker, settings, principal, cards_count=cards, ratio_bp=ratio_bp, progress=setup_progress
    )
    steps: list[Step] = []

    started = time.perf_counter()
    async with sessionmaker() as session:
        closure = await service.open_closure(
            session, settings, principal, ClosureCreate(merchant_id=setup.merchant_id, reason="bench: vanished")
        )
        frozen = int(
            await session.scalar(
                select(func.count()).where(Card.merchant_id == setup.merchant_id, Card.status == "active")
            )
            or 0
        )
        await session.commit()
    steps.append(Step("freeze", frozen, time.perf_counter() - started))
    closure_id = closure.id

    started = time.perf_counter()
    async with sessionmaker() as session:
        closure = await service.start(session, settings, principal, closure_id)
        total = closure.items_total
        await session.commit()
    steps.append(Step("plan", total, time.perf_counter() - started))

    if progress is not None:
        progress(0, total)
    started = time.perf_counter()
    closure = await service.settle(sessionmaker, settings, closure_id, batch_size=batch, progress=progress)
    steps.append(Step("execution", closure.items_done, time.perf_counter() - started))
    rss = peak_rss_kib()

    async with sessionmaker() as session:
        totals = await service.totals(session, closure_id)
    result = ClosureBenchResult(
        cards, ratio_bp, batch, setup, closure_id, closure.status, totals, steps, peak_rss_kib=rss
    )
    if verify:
        started = time.perf_counter()
        report = await verify_database(engine)
        result.verify_seconds = time.perf_counter() - started
        result.verify_ok = report.ok
        result.verify_entries = next((c.checked for c in report.checks if c.name == "entries_balance"), 0)
        result.failed_checks = [f"{c.name}: {c.first_failure}" for c in report.checks if not c.ok]
    return result


# --- printing ------------------------------------------------------------------------------------------------


def table(result: ClosureBenchResult) -> str:
    lines = ["| step | items | seconds | items/s |", "|---|---:|---:|---:|"]
    for step in result.steps:
        lines.append(f"| {step.name} | {step.items:,} | {step.seconds:.1f} | {step.rate:,.0f} |")
    plan_and_execution = [s for s in result.steps if s.name in ("plan", "execution")]
    items = plan_and_execution[-1].items if plan_and_execution else 0
    seconds = result.measured_seconds
    lines.append(f"| **plan + execution** | {items:,} | **{seconds:.1f}** | {items / seconds if seconds else 0:,.0f} |")
    return "\n".join(lines)


def summary(result: ClosureBenchResult) -> str:
    setup = result.setup
    custody = "full custody" if result.ratio_bp >= FULL else f"3 in 4 at {result.ratio_bp} bp custody, 1 in 4 full"
    met = "met" if result.measured_seconds <= TARGET_SECONDS * result.cards / 100_000 else "NOT met"
    lines = [
        f"setup (not measured): {setup.cards:,} paid cards ({custody}) of {setup.consumers:,} consumers,"
        f" {setup.released_cards:,} with sessions released, {setup.entries:,} journal entries in {setup.seconds:.1f} s",
        f"plan + execution: {result.measured_seconds:.1f} s for {result.cards:,} cards, batches of {result.batch:,}"
        f" (target {TARGET_SECONDS:.0f} s per 100,000 cards: {met})",
        f"closure {result.closure_id}: {result.status}, {result.totals.done:,}/{result.totals.items:,} items done",
        f"peak RSS of the benchmark process: {result.peak_rss_kib / 1024:,.0f} MiB (PostgreSQL not included)",
    ]
    if result.verify_ok is None:
        lines.append("ledger not verified (--no-verify)")
    else:
        lines.append(
            f"verify_database (not part of the target): {'ok' if result.verify_ok else 'FAILED'},"
            f" {result.verify_entries:,} entries in {result.verify_seconds:.1f} s"
        )
        lines.extend(f"  FAIL {failure}" for failure in result.failed_checks)
    return "\n".join(lines)

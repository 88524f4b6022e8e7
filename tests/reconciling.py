"""Helpers for reconciliation tests: an escrow account with a day of movements, statements as a bank sends them."""

from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.reconciliation.parsing import Header, Line, camt053_chunks, json_line
from tests.closing import confirm_service, record_service
from tests.parties import (
    Bank,
    Merchant,
    bank_transaction_id,
    bearer,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

PRICE = 100_000  # fen: 10 sessions for 1,000 yuan
BANK_ACCOUNT_NUMBER = "330104000123456789"  # what open_escrow_account activates with (spaces dropped)
_phones = iter(range(13900000000, 13999999999))


def today() -> date:
    return datetime.now(ZoneInfo("Asia/Shanghai")).date()


@dataclass
class Deposit:
    card_id: str
    payment_reference: str
    bank_transaction_id: str
    amount: int


@dataclass
class Payment:
    """An instruction the bank executed: payout or refund."""

    instruction_id: str
    bank_transaction_id: str
    amount: int
    kind: str


@dataclass
class Desk:
    """One bank, one merchant, one escrow account, and the consumers and cards made there."""

    client: httpx.AsyncClient
    session: AsyncSession
    regulator: str
    bank: Bank
    merchant: Merchant
    account_id: str
    plan_id: str
    consumers: list[tuple[str, str]] = field(default_factory=list)  # (id, token)

    async def deposit(self) -> Deposit:
        """A consumer buys a card and pays: the bank reports the deposit."""
        consumer = await consumer_token(self.client, self.merchant, str(next(_phones)))
        self.consumers.append(consumer)
        card_id = await sell_and_pay(self.client, self.merchant, self.bank, self.plan_id, consumer[0])
        row = (
            await self.session.execute(
                text("SELECT payment_reference, deposit_transaction_id, price FROM cards WHERE id = :id"),
                {"id": card_id},
            )
        ).one()
        await self.session.rollback()
        return Deposit(card_id, row[0], row[1], row[2])

    async def sell_unpaid(self) -> Deposit:
        """A card sold but not reported paid (its deposit shows only on the statement)."""
        consumer = await consumer_token(self.client, self.merchant, str(next(_phones)))
        sold = await self.client.post(
            "/v1/cards",
            json={"plan_id": self.plan_id, "consumer_id": consumer[0]},
            headers={**bearer(self.merchant.token), **key()},
        )
        assert sold.status_code == 201, sold.text
        body = sold.json()
        return Deposit(
            body["card"]["id"], body["payment"]["payment_reference"], "", body["payment"]["amount"]["amount"]
        )

    async def payout(self, consumer_index: int, card_id: str, sessions: int) -> Payment:
        """Sessions used and confirmed, paid out to the merchant; the bank executes the instruction."""
        token = self.consumers[consumer_index][1]
        for _ in range(sessions):
            await confirm_service(self.client, token, await record_service(self.client, self.merchant, card_id, 1))
        run = await self.client.post("/v1/payout-runs", json={}, headers={**bearer(self.merchant.token), **key()})
        assert run.status_code == 201 and len(run.json()["instructions"]) == 1, run.text
        return await self.execute(run.json()["instructions"][0]["id"])

    async def refund(self, consumer_index: int, card_id: str) -> Payment:
        """The consumer ends the card within the cooling-off days; the bank pays the refund back."""
        token = self.consumers[consumer_index][1]
        quote = await self.client.get(f"/v1/cards/{card_id}/refund-quote?cause=consumer", headers=bearer(token))
        assert quote.status_code == 200, quote.text
        refund = await self.client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"cause": "consumer", "expected_amount": quote.json()["amount"]},
            headers={**bearer(token), **key()},
        )
        assert refund.status_code == 201, refund.text
        listed = await self.client.get("/v1/instructions", params={"status": "pending"}, auth=self.bank.auth)
        (instruction,) = [i for i in listed.json()["items"] if i["refund_id"] == refund.json()["id"]]
        return await self.execute(instruction["id"])

    async def execute(self, instruction_id: str) -> Payment:
        transaction = bank_transaction_id()
        executed = await self.client.post(
            f"/v1/instructions/{instruction_id}/executed",
            json={"bank_transaction_id": transaction},
            headers=key(),
            auth=self.bank.auth,
        )
        assert executed.status_code == 200, executed.text
        body = executed.json()
        return Payment(instruction_id, transaction, body["amount"]["amount"], body["kind"])


async def desk(client: httpx.AsyncClient, session: AsyncSession, code: str = "RCNB") -> Desk:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, code)
    merchant = await onboard_merchant(client, regulator, f"Gym {code}")
    account_id = await open_escrow_account(client, merchant, bank)
    plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=PRICE)
    return Desk(client, session, regulator, bank, merchant, account_id, plan["id"])


def credit(deposit: Deposit, *, amount: int | None = None, reference: bool = True, day: date | None = None) -> Line:
    """The statement line of a deposit: the payment reference as end-to-end id, the bank's transaction id."""
    day = day or today()
    return Line(
        deposit.bank_transaction_id,
        deposit.payment_reference if reference else None,
        "credit",
        amount or deposit.amount,
        day,
        day,
        "card payment",
    )


def debit(payment: Payment, *, reference: bool = True, bank_reference: str | None = None, day: date | None = None):
    day = day or today()
    return Line(
        bank_reference or payment.bank_transaction_id,
        payment.instruction_id if reference else None,
        "debit",
        payment.amount,
        day,
        day,
        payment.kind,
    )


def fee(amount: int, reference: str = "FEE-0001", day: date | None = None) -> Line:
    day = day or today()
    return Line(reference, None, "debit", amount, day, day, "account maintenance fee")


def closing(opening: int, lines: list[Line]) -> int:
    return opening + sum(line.amount if line.direction == "credit" else -line.amount for line in lines)


def statement_json(account_id: str, lines: list[Line], *, opening: int = 0, day: date | None = None) -> dict:
    return {
        "escrow_account_id": account_id,
        "business_date": (day or today()).isoformat(),
        "statement_id": f"STMT-{(day or today()).isoformat()}",
        "opening_balance": {"amount": opening, "currency": "CNY"},
        "closing_balance": {"amount": closing(opening, lines), "currency": "CNY"},
        "lines": [json_line(line) for line in lines],
    }


def camt053(statements: list[tuple[str, list[Line], int, date | None]]) -> bytes:
    """A camt.053 document of (account number or id, lines, opening, day) statements."""
    return "".join(
        camt053_chunks(
            (Header("camt053", account, day or today(), opening, closing(opening, lines), None, None, ""), lines)
            for account, lines, opening, day in statements
        )
    ).encode()


async def send(client: httpx.AsyncClient, bank: Bank, body: dict, expected: int = 201) -> dict:
    response = await client.post("/v1/statements", json=body, headers=key(), auth=bank.auth)
    assert response.status_code == expected, response.text
    return response.json()


async def send_camt(client: httpx.AsyncClient, bank: Bank, document: bytes, expected: int = 201) -> dict:
    response = await client.post(
        "/v1/statements/camt053",
        content=document,
        headers={**key(), "Content-Type": "application/xml"},
        auth=bank.auth,
    )
    assert response.status_code == expected, response.text
    return response.json()


async def breaks(client: httpx.AsyncClient, token: str, **params) -> list[dict]:
    response = await client.get("/v1/reconciliation/breaks", params={"limit": 200, **params}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def lines(client: httpx.AsyncClient, token: str, statement_id: str) -> list[dict]:
    response = await client.get(f"/v1/statements/{statement_id}/lines", params={"limit": 200}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def statement(client: httpx.AsyncClient, token: str, statement_id: str) -> dict:
    response = await client.get(f"/v1/statements/{statement_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


async def resolve(client: httpx.AsyncClient, token: str, break_id: str, expected: int = 200, **body) -> dict:
    response = await client.post(
        f"/v1/reconciliation/breaks/{break_id}/resolve", json=body, headers={**bearer(token), **key()}
    )
    assert response.status_code == expected, response.text
    return response.json()


async def statement_from_ledger(session: AsyncSession, account_id: str, day: date) -> list[tuple[int, Line]]:
    """What an honest bank's statement of the day shows, read from the journal itself (not the projection):
    (entry id, line) per posted custody_cash movement, quoting the reference the service issued."""
    rows = await session.execute(
        text(
            "SELECT e.id, p.side, p.amount, e.refs->>'bank_transaction_id',"
            "  coalesce(c.payment_reference, e.refs->>'instruction_id'), e.kind"
            " FROM ledger_accounts a JOIN ledger_postings p ON p.account_id = a.id AND p.kind = 'posted'"
            " JOIN ledger_entries e ON e.id = p.entry_id"
            " LEFT JOIN cards c ON e.kind = 'card_paid' AND c.id = e.refs->>'card_id'"
            " WHERE a.escrow_account_id = :book AND a.code = 'custody_cash' AND e.business_date = :day"
            " ORDER BY p.id"
        ),
        {"book": account_id, "day": day},
    )
    out = [
        (entry, Line(btx, ref, "credit" if side == "D" else "debit", amount, day, day, kind))
        for entry, side, amount, btx, ref, kind in rows
    ]
    await session.rollback()
    return out

"""Attaching a statement line to a card never lets one bank transaction pay two cards."""

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.cards import service as cards
from escrow.config import Settings
from escrow.ledger.errors import DuplicateMovement
from tests.parties import bearer, key
from tests.reconciling import PRICE, breaks, credit, desk, resolve, send, statement_json


async def paid_by(session: AsyncSession, transaction: str) -> list[str]:
    rows = await session.scalars(
        text("SELECT id FROM cards WHERE deposit_transaction_id = :t ORDER BY id"), {"t": transaction}
    )
    paid = list(rows)
    await session.rollback()
    return paid


async def test_a_deposit_reported_since_the_last_run_is_not_attached_again(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    shop = await desk(client, session)
    reported, other = await shop.sell_unpaid(), await shop.sell_unpaid()
    line = credit(reported)._replace(bank_transaction_id="BTX-LATE-2", end_to_end_id=None)
    await send(client, shop.bank, statement_json(shop.account_id, [line]))
    (found,) = await breaks(client, shop.regulator, state="open")
    deposit = await client.post(
        "/v1/deposits",
        json={
            "payment_reference": reported.payment_reference,
            "amount": {"amount": PRICE, "currency": "CNY"},
            "bank_transaction_id": "BTX-LATE-2",
        },
        headers=key(),
        auth=shop.bank.auth,
    )
    assert deposit.status_code == 200, deposit.text
    # no matching run since the report: the break still looks open, but the deposit is in the ledger now
    refused = await resolve(
        client, shop.regulator, found["id"], 409, action="attach_to_card", card_id=other.card_id, note="late"
    )
    assert refused["code"] == "break_settled"
    assert await paid_by(session, "BTX-LATE-2") == [reported.card_id]


async def test_a_duplicated_line_does_not_pay_a_second_card(client: httpx.AsyncClient, session: AsyncSession) -> None:
    shop = await desk(client, session)
    paid = await shop.deposit()
    unpaid = await shop.sell_unpaid()
    # the bank books the same transaction twice, the copy without its reference: the copy is not in the ledger
    copy = credit(paid, reference=False)
    await send(client, shop.bank, statement_json(shop.account_id, [credit(paid), copy]))
    (found,) = await breaks(client, shop.regulator, state="open")
    assert found["kind"] == "not_in_ledger"
    refused = await resolve(
        client, shop.regulator, found["id"], 409, action="attach_to_card", card_id=unpaid.card_id, note="copy"
    )
    assert refused["code"] == "resolution_refused" and paid.bank_transaction_id in refused["detail"]
    assert await paid_by(session, paid.bank_transaction_id) == [paid.card_id]
    card = await client.get(f"/v1/cards/{unpaid.card_id}", headers=bearer(shop.merchant.token))
    assert card.json()["status"] == "awaiting_payment"


async def test_the_ledger_refuses_a_second_payment_by_one_transaction_however_told(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    """The last line of defence, for a deposit report and an attachment that race past the checks above: both
    pay a card with the same ledger reference, whose unique index refuses the second."""
    shop = await desk(client, session)
    paid = await shop.deposit()
    unpaid = await shop.sell_unpaid()
    card = await cards.lock_payable(session, unpaid.card_id)
    assert card is not None and card.status == "awaiting_payment"
    with pytest.raises(DuplicateMovement):
        await cards.activate_paid(session, settings, card, "system:test", paid.bank_transaction_id, "statement")
    await session.rollback()
    assert await paid_by(session, paid.bank_transaction_id) == [paid.card_id]

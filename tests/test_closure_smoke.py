import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.ledger.integrity import verify_database
from tests.closing import bank_executes_all, compute_plan, flat, items, order_closure, start_and_settle
from tests.parties import (
    account_totals,
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

YUAN = 100


async def test_salon_full_custody(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "SALB")
    salon = await onboard_merchant(client, regulator, "Silk Salon", "salon")
    account = await open_escrow_account(client, salon, bank)
    plan = await create_plan(client, salon, kind="sessions", sessions=10, price=1000 * YUAN)
    cards = []
    for n in range(3):
        consumer_id, _token = await consumer_token(client, salon, f"1390000100{n}")
        cards.append(await sell_and_pay(client, salon, bank, plan["id"], consumer_id))
    closure = await order_closure(client, regulator, salon.id)
    assert closure["status"] == "frozen"
    planned = await compute_plan(client, regulator, closure["id"])
    print(planned)
    result = await start_and_settle(client, regulator, closure["id"], sessionmaker, settings)
    print(result)
    print(await items(client, regulator, closure["id"]))
    done = await bank_executes_all(client, bank)
    print(done)
    print(await account_totals(client, regulator, account))
    report = await verify_database(engine)
    assert report.ok, [c for c in report.checks if not c.ok]


async def test_ratio_gym_vanishes(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    from tests.parties import onboard_ratio_merchant

    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "GYMR")
    fund_bank = await onboard_bank(client, regulator, "FUND")
    r = await client.put(
        "/v1/fund/bank-account",
        json={"bank_id": fund_bank.id, "bank_account_number": "6222 1111 2222 3333"},
        headers={**bearer(regulator), **key()},
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/fund/contributions",
        json={
            "source_kind": "insurer",
            "source_name": "PICC",
            "amount": {"amount": 50000, "currency": "CNY"},
            "bank_transaction_id": "F1",
        },
        headers={**bearer(regulator), **key()},
    )
    assert r.status_code == 201, r.text
    gym = await onboard_ratio_merchant(client, regulator, "Ratio Gym")
    account = await open_escrow_account(client, gym, bank)
    plan = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN)
    cards = []
    for n in range(3):
        consumer_id, token = await consumer_token(client, gym, f"1390000200{n}")
        card = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        cards.append((card, token))
    # one session used and confirmed on the first card: 100 yuan released, 40 to merchant_payable
    rec = await client.post(
        f"/v1/cards/{cards[0][0]}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
    )
    assert rec.status_code == 201, rec.text
    ok = await client.post(f"/v1/consumptions/{rec.json()['id']}/confirm", headers={**bearer(cards[0][1]), **key()})
    assert ok.status_code == 200, ok.text
    print(await account_totals(client, regulator, account))
    closure = await order_closure(client, regulator, gym.id)
    planned = await compute_plan(client, regulator, closure["id"])
    print(flat(planned["totals"]))
    result = await start_and_settle(client, regulator, closure["id"], sessionmaker, settings)
    print(flat(result["totals"]))
    for i in await items(client, regulator, closure["id"]):
        print(i)
    await bank_executes_all(client, bank)
    await bank_executes_all(client, fund_bank)
    print(await account_totals(client, regulator, account))
    print((await client.get("/v1/fund", headers=bearer(regulator))).json())
    r = await client.post(
        "/v1/fund/contributions",
        json={
            "source_kind": "government",
            "source_name": "MOFCOM",
            "amount": {"amount": 10000000, "currency": "CNY"},
            "bank_transaction_id": "F2",
        },
        headers={**bearer(regulator), **key()},
    )
    print(r.json())
    await bank_executes_all(client, fund_bank)
    print((await client.get("/v1/fund", headers=bearer(regulator))).json())
    print((await client.get("/v1/fund/claims", headers=bearer(regulator))).json())
    print((await client.get("/v1/me/closure-statements", headers=bearer(cards[1][1]))).json())
    conf = await client.post(f"/v1/closures/{closure['id']}/confirm", headers={**bearer(regulator), **key()})
    print(conf.json())
    report = await verify_database(engine)
    assert report.ok, [c for c in report.checks if not c.ok]
    csv = await client.get(f"/v1/closures/{closure['id']}/plan.csv", headers=bearer(regulator))
    print(csv.status_code, csv.text)

"""Parties through the API: a regulator onboards a bank and a merchant, the merchant opens an escrow account,
the bank activates it, a consumer signs in; then the refusals along the way."""

import json

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger
from tests.parties import (
    bearer,
    consumer_token,
    key,
    new_uscc,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
    send_code,
    sms_code_for,
)


@pytest.fixture
async def regulator(session: AsyncSession) -> str:
    return await regulator_token(session)


class TestOnboarding:
    async def test_the_whole_path(self, client: AsyncClient, session: AsyncSession, regulator: str) -> None:
        bank = await onboard_bank(client, regulator, "NBCB")
        merchant = await onboard_merchant(client, regulator, "Iron Temple Fitness")

        pending = await client.post(
            "/v1/escrow-accounts", json={"bank_id": bank.id}, headers={**bearer(merchant.token), **key()}
        )
        assert pending.status_code == 201 and pending.json()["status"] == "pending"
        account_id = pending.json()["id"]

        activated = await client.post(
            f"/v1/escrow-accounts/{account_id}/activate",
            json={"bank_account_number": "3301-0400-0123-4567-89"},
            headers=key(),
            auth=bank.auth,
        )
        assert activated.status_code == 200, activated.text
        assert activated.json()["status"] == "active"
        assert activated.json()["bank_account_masked"] == "**** 6789"
        balance = await ledger.balance(session, account_id, "custody_cash")
        assert balance.posted == 0  # the ledger book exists with its accounts

        consumer_id, token = await consumer_token(client, merchant, "138 1234 5678")
        me = await client.get("/v1/me", headers=bearer(token))
        assert me.json() == {"principal_id": consumer_id, "role": "consumer", "token_id": me.json()["token_id"]}
        seen = await client.get(f"/v1/consumers/{consumer_id}", headers=bearer(token))
        assert seen.json()["phone_masked"] == "138****5678"

    async def test_nothing_secret_is_stored_in_clear(
        self, client: AsyncClient, session: AsyncSession, regulator: str
    ) -> None:
        bank = await onboard_bank(client, regulator, "ICBC")
        merchant = await onboard_merchant(client, regulator, "Glow Salon", "salon")
        await open_escrow_account(client, merchant, bank)
        await consumer_token(client, merchant, "13912345678")
        dump = ""
        for table in ("banks", "merchants", "escrow_accounts", "consumers", "consumer_codes", "api_tokens"):
            rows = (await session.execute(text(f"SELECT to_jsonb(t) FROM {table} t"))).scalars().all()
            dump += json.dumps(rows)
        for secret in (
            bank.secret,
            bank.token,
            merchant.token,
            "13912345678",
            "6222021234567890123",
            "330104000123456789",
        ):
            assert secret not in dump


class TestRefusals:
    async def test_invalid_credit_code_names_the_field(self, client: AsyncClient, regulator: str) -> None:
        code = new_uscc()
        broken = code[:-1] + ("0" if code[-1] != "0" else "1")
        response = await client.post(
            "/v1/merchants",
            json={
                "name": "X",
                "category": "gym",
                "uscc": broken,
                "credit_rating": "A",
                "settlement_account": "6222021234567890123",
            },
            headers={**bearer(regulator), **key()},
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "uscc"

    async def test_duplicate_credit_code_is_409(self, client: AsyncClient, regulator: str) -> None:
        body = {
            "name": "X",
            "category": "gym",
            "uscc": new_uscc(),
            "credit_rating": "A",
            "settlement_account": "6222021234567890123",
        }
        first = await client.post("/v1/merchants", json=body, headers={**bearer(regulator), **key()})
        second = await client.post("/v1/merchants", json=body, headers={**bearer(regulator), **key()})
        assert (first.status_code, second.status_code) == (201, 409)

    async def test_bank_rejects_with_reason(self, client: AsyncClient, regulator: str) -> None:
        bank = await onboard_bank(client, regulator, "BOC")
        merchant = await onboard_merchant(client, regulator, "Bright Minds", "training")
        pending = await client.post(
            "/v1/escrow-accounts", json={"bank_id": bank.id}, headers={**bearer(merchant.token), **key()}
        )
        account_id = pending.json()["id"]
        rejected = await client.post(
            f"/v1/escrow-accounts/{account_id}/reject",
            json={"reason": "KYC incomplete"},
            headers=key(),
            auth=bank.auth,
        )
        assert rejected.json()["status"] == "rejected" and rejected.json()["rejection_reason"] == "KYC incomplete"
        again = await client.post(
            f"/v1/escrow-accounts/{account_id}/activate",
            json={"bank_account_number": "1234567890"},
            headers=key(),
            auth=bank.auth,
        )
        assert again.status_code == 409 and again.json()["code"] == "invalid_state"

    async def test_freeze_stops_the_ledger(self, client: AsyncClient, session: AsyncSession, regulator: str) -> None:
        bank = await onboard_bank(client, regulator, "CCB")
        merchant = await onboard_merchant(client, regulator, "Yoga Loft")
        account_id = await open_escrow_account(client, merchant, bank)
        frozen = await client.post(
            f"/v1/escrow-accounts/{account_id}/freeze",
            json={"reason": "complaints"},
            headers={**bearer(regulator), **key()},
        )
        assert frozen.json()["status"] == "frozen"
        await ledger.open_account(session, account_id, "card:c1")
        with pytest.raises(ledger.AccountFrozen):
            await ledger.post(
                session, ledger.Entry(account_id, "card_paid", ledger.transfer("custody_cash", "card:c1", 100))
            )
        await session.rollback()
        await client.post(f"/v1/escrow-accounts/{account_id}/unfreeze", headers={**bearer(regulator), **key()})
        await ledger.open_account(session, account_id, "card:c1")
        await ledger.post(
            session, ledger.Entry(account_id, "card_paid", ledger.transfer("custody_cash", "card:c1", 100))
        )

    async def test_wrong_codes_burn_the_code(self, client: AsyncClient, session: AsyncSession) -> None:
        await send_code(client, "13700001111")
        code = await sms_code_for(session, "13700001111")
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        for _ in range(5):
            response = await client.post("/v1/consumer-tokens", json={"phone": "13700001111", "code": wrong})
            assert response.status_code == 401 and response.json()["code"] == "invalid_code"
        burnt = await client.post("/v1/consumer-tokens", json={"phone": "13700001111", "code": code})
        assert burnt.status_code == 401

    async def test_token_rotation_and_revocation(self, client: AsyncClient, regulator: str) -> None:
        merchant = await onboard_merchant(client, regulator, "Dance Hall")
        me = (await client.get("/v1/me", headers=bearer(merchant.token))).json()
        rotated = await client.post(f"/v1/tokens/{me['token_id']}/rotate", headers={**bearer(merchant.token), **key()})
        assert rotated.status_code == 201
        new_secret = rotated.json()["secret"]
        assert (await client.get("/v1/me", headers=bearer(merchant.token))).status_code == 401
        listed = await client.get("/v1/tokens", headers=bearer(new_secret))
        assert [t["revoked_at"] is None for t in listed.json()] == [False, True]
        assert all("secret" not in t and new_secret not in json.dumps(t) for t in listed.json())
        new_id = rotated.json()["token"]["id"]
        revoked = await client.post(f"/v1/tokens/{new_id}/revoke", headers={**bearer(new_secret), **key()})
        assert revoked.status_code == 200
        assert (await client.get("/v1/me", headers=bearer(new_secret))).status_code == 401


class TestAudit:
    async def test_changes_and_refusals_are_recorded(self, client: AsyncClient, regulator: str) -> None:
        merchant = await onboard_merchant(client, regulator, "Audit Gym")
        await client.post("/v1/merchants", json={"name": ""}, headers={**bearer(regulator), **key()})
        await client.post("/v1/banks", json={"name": "x", "code": "XX"}, headers={**bearer("esk_reg_forged"), **key()})
        trail = await client.get("/v1/audit", headers=bearer(regulator))
        assert trail.status_code == 200
        records = trail.json()["items"]
        actions = [(r["action"], r["outcome"], r["status"]) for r in records]
        assert ("POST /v1/banks", "refused", 401) in actions
        assert ("POST /v1/merchants", "refused", 422) in actions
        created = next(r for r in records if r["outcome"] == "done" and r["action"] == "POST /v1/merchants")
        assert created["object_id"] == merchant.id and created["role"] == "regulator"
        assert created["request_id"]
        filtered = await client.get("/v1/audit", params={"object_id": merchant.id}, headers=bearer(regulator))
        assert [r["object_id"] for r in filtered.json()["items"]] == [merchant.id]

    async def test_audit_rows_are_append_only(self, session: AsyncSession, client: AsyncClient, regulator: str) -> None:
        await onboard_merchant(client, regulator, "Append Gym")
        with pytest.raises(Exception, match="append-only"):
            await session.execute(text("DELETE FROM audit_records"))


class TestSecretsShownOnce:
    async def test_replaying_an_onboarding_does_not_show_the_secrets_again(
        self, client: AsyncClient, session: AsyncSession, regulator: str
    ) -> None:
        headers = {**bearer(regulator), "Idempotency-Key": "bank-once"}
        body = {"name": "Once Bank", "code": "ONCE"}
        first = await client.post("/v1/banks", json=body, headers=headers)
        again = await client.post("/v1/banks", json=body, headers=headers)
        assert first.status_code == 201
        assert again.status_code == 409 and again.headers["idempotency-replayed"] == "true"
        assert again.json()["code"] == "secret_already_issued"
        stored = (await session.execute(text("SELECT convert_from(body, 'UTF8') FROM idempotency_keys"))).scalars()
        dump = "".join(stored)
        assert first.json()["token"] not in dump and first.json()["signing_secret"] not in dump
        assert (await client.get("/v1/banks", headers=bearer(regulator))).json()[-1]["code"] == "ONCE"


class TestConcurrentGuesses:
    async def test_no_more_guesses_than_allowed_are_compared(self, client: AsyncClient, session: AsyncSession) -> None:
        import asyncio

        await send_code(client, "13600001111")
        code = await sms_code_for(session, "13600001111")
        wrong = [f"{(int(code) + n) % 10**6:06d}" for n in range(1, 31)]
        responses = await asyncio.gather(
            *(client.post("/v1/consumer-tokens", json={"phone": "13600001111", "code": w}) for w in wrong)
        )
        assert {r.status_code for r in responses} <= {401, 429}
        right = await client.post("/v1/consumer-tokens", json={"phone": "13600001111", "code": code})
        assert right.status_code in (401, 429)  # the code was burnt after 5 tries, however concurrent


class TestStatusReason:
    async def test_suspension_reason_is_in_the_audit_trail(self, client: AsyncClient, regulator: str) -> None:
        merchant = await onboard_merchant(client, regulator, "Reason Gym")
        changed = await client.post(
            f"/v1/merchants/{merchant.id}/status",
            json={"status": "suspended", "reason": "unpaid refunds"},
            headers={**bearer(regulator), **key()},
        )
        assert changed.json()["status"] == "suspended"
        trail = await client.get(
            "/v1/audit", params={"action": "POST /v1/merchants/{merchant_id}/status"}, headers=bearer(regulator)
        )
        assert trail.json()["items"][0]["detail"] == {"status": "suspended", "reason": "unpaid refunds"}

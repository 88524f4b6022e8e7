"""For a random ledger day, the statement an honest bank would send matches completely; removing, duplicating or
changing one of its lines yields exactly the break that change makes, and sending the honest one again clears it.

Each example builds its own escrow account through the API (deposits, payouts, refunds), reads the statement from
the journal itself, gives each line one of the three ways a bank may quote it (the service's reference, only the
bank's own, or neither), and sends it, then a correction with the one change, then the honest one again.
Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default, few examples) and ``long``.
"""

import itertools
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from tests.reconciling import breaks, desk, send, statement_from_ledger, statement_json, today

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
THROUGH_THE_API = hypothesis_settings(
    max_examples={"long": 100}.get(_PROFILE, 8),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
_codes = itertools.count()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # a movement missing from the statement is a break at once (no days in transit), so removal shows at once
    return settings.model_copy(update={"payout_hour": None, "reconciliation_in_transit_days": 0})


@st.composite
def days(draw: st.DrawFn) -> dict:
    deposits = draw(st.integers(1, 5))
    used = draw(st.lists(st.integers(0, 3), min_size=deposits, max_size=deposits))  # sessions paid out per card
    refunded = draw(
        st.sets(st.sampled_from([i for i in range(deposits) if used[i] == 0]) if 0 in used else st.nothing())
    )
    movements = deposits + sum(1 for u in used if u) + len(refunded)
    return {
        "deposits": deposits,
        "used": used,
        "refunded": sorted(refunded),
        "quoting": draw(
            st.lists(st.sampled_from(["service", "bank", "neither"]), min_size=movements, max_size=movements)
        ),
        "change": draw(st.sampled_from(["remove", "duplicate", "amount"])),
        "line": draw(st.integers(0, movements - 1)),
        "delta": draw(st.integers(1, 999)),
    }


class TestAStatementOfTheDay:
    @THROUGH_THE_API
    @given(day=days())
    async def test_matches_completely_and_one_change_is_exactly_its_break(
        self, client: httpx.AsyncClient, session: AsyncSession, day: dict
    ) -> None:
        note(repr(day))
        shop = await desk(client, session, f"RP{next(_codes):04d}")
        cards = [await shop.deposit() for _ in range(day["deposits"])]
        for i, sessions in enumerate(day["used"]):
            if sessions:
                await shop.payout(i, cards[i].card_id, sessions)
        for i in day["refunded"]:
            await shop.refund(i, cards[i].card_id)
        honest = await statement_from_ledger(session, shop.account_id, today())
        assert len(honest) == len(day["quoting"])
        lines = []
        for (entry, line), quoting in zip(honest, day["quoting"], strict=True):
            if quoting == "bank":
                line = line._replace(end_to_end_id=None)
            elif quoting == "neither":
                line = line._replace(end_to_end_id=None, bank_transaction_id=f"OWN-{entry}")
            lines.append((entry, line))

        full = await send(client, shop.bank, statement_json(shop.account_id, [line for _, line in lines]))
        first = full["statements"][0]
        assert first["lines"] == {"matched": len(lines), "amount_mismatch": 0, "not_in_ledger": 0}
        assert (
            first["reconciled"] is True
            and await breaks(client, shop.regulator, state="open", escrow_account_id=shop.account_id) == []
        )

        k, (entry, line) = day["line"], lines[day["line"]]
        changed = [line for _, line in lines]
        signed = line.amount if line.direction == "credit" else -line.amount
        delta = 0
        if day["change"] == "remove":
            del changed[k]
            expected = [("not_on_statement", -signed)]
        elif day["change"] == "duplicate":
            changed.insert(k + 1, line)
            expected = [("not_in_ledger", signed)]
        else:
            changed[k] = line._replace(amount=line.amount + day["delta"])
            delta = day["delta"] if line.direction == "credit" else -day["delta"]
            if day["quoting"][k] == "neither":  # matched by amount alone: now nothing pairs them
                expected = [("not_in_ledger", signed + delta), ("not_on_statement", -signed)]
            else:
                expected = [("amount_mismatch", delta)]
        # a movement that only amount and date can pair is indistinguishable, that way, from the others of its
        # amount and direction that day: any of them may be the one left over
        alike = {entry} | {
            e
            for (e, other), quoting in zip(lines, day["quoting"], strict=True)
            if quoting == "neither" and (other.direction, other.amount) == (line.direction, line.amount)
        }
        correction = (await send(client, shop.bank, statement_json(shop.account_id, changed)))["statements"][0]
        assert correction["outcome"] == "replaced" and correction["reconciled"] is False
        found = await breaks(client, shop.regulator, state="open", escrow_account_id=shop.account_id)
        assert sorted((b["kind"], b["amount"]["amount"]) for b in found) == sorted(expected)
        for b in found:
            if b["kind"] == "not_in_ledger":
                assert b["ledger_entry_id"] is None and b["line"]["amount"]["amount"] == abs(signed + delta)
            elif b["kind"] == "not_on_statement":
                assert b["ledger_entry_id"] in alike and b["line"] is None
            else:
                assert b["ledger_entry_id"] == entry and b["line"]["line_no"] == k + 1
        assert correction["closing"]["ok"] is (day["change"] == "remove")  # a missing line is only in transit

        again = await send(client, shop.bank, statement_json(shop.account_id, [line for _, line in lines]))
        assert again["statements"][0]["reconciled"] is True
        assert await breaks(client, shop.regulator, state="open", escrow_account_id=shop.account_id) == []

"""One phone is one consumer however it is typed (issue #12, item 8): full-width digits, spaces, dashes and +86
are normalized before the number is checked, hashed and masked — on registration and on sign-in alike."""

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.kit.crypto import normalize_phone
from escrow.models import Consumer
from tests.parties import bearer, key, onboard_merchant, regulator_token, send_code, sms_code_for


def full_width(typed: str) -> str:
    """The same characters as a Chinese input method types them in full-width mode (U+FF01..U+FF5E)."""
    return typed.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789+-"})


SAME_PHONE = (
    "13812345678",
    "13" + full_width("8") + "12345678",  # the report: one full-width digit made a second consumer
    full_width("13812345678"),
    full_width("+86") + "\u3000" + full_width("138-1234-5678"),  # with an ideographic space
    "+86 138-1234-5678",
    "0086 138 1234 5678",
    "8613812345678",
)


class TestNormalForm:
    @pytest.mark.parametrize("typed", SAME_PHONE)
    def test_every_way_of_typing_it_is_the_same_eleven_ascii_digits(self, typed: str) -> None:
        assert normalize_phone(typed) == "13812345678"

    @pytest.mark.parametrize(
        "typed",
        [
            "13\u0668" + "12345678",  # an Arabic-Indic eight: a digit to \\d, not a phone digit
            "138123456789",
            "23812345678",
            "13812345678\u200b",  # a zero-width space
            "138 1234 567x",
        ],
    )
    def test_anything_else_is_refused(self, typed: str) -> None:
        with pytest.raises(ValueError):
            normalize_phone(typed)


class TestOneConsumerPerPhone:
    async def test_full_width_digits_find_the_consumer_already_registered(
        self, client: AsyncClient, session: AsyncSession
    ) -> None:
        regulator = await regulator_token(session)
        gym = await onboard_merchant(client, regulator, "Full Width Gym")
        first = await client.post(
            "/v1/consumers", json={"phone": "13812345678"}, headers={**bearer(gym.token), **key()}
        )
        assert first.status_code == 201, first.text
        for typed in SAME_PHONE[1:]:
            again = await client.post("/v1/consumers", json={"phone": typed}, headers={**bearer(gym.token), **key()})
            assert again.status_code == 201, (typed, again.text)  # the same answer as the first: nothing told
            assert again.json()["id"] == first.json()["id"] and again.json()["phone_masked"] == "138****5678"
        assert await session.scalar(select(func.count()).select_from(Consumer)) == 1

    async def test_sign_in_with_the_number_typed_otherwise(self, client: AsyncClient, session: AsyncSession) -> None:
        regulator = await regulator_token(session)
        gym = await onboard_merchant(client, regulator, "Sign In Gym")
        registered = await client.post(
            "/v1/consumers", json={"phone": "13812345678"}, headers={**bearer(gym.token), **key()}
        )
        await send_code(client, "+86 138-1234-5678")
        code = await sms_code_for(session, "13812345678")
        signed_in = await client.post(
            "/v1/consumer-tokens", json={"phone": full_width("138 1234 5678"), "code": code}, headers=key()
        )
        assert signed_in.status_code == 201, signed_in.text
        assert signed_in.json()["consumer"]["id"] == registered.json()["id"]

    async def test_a_digit_of_another_script_is_refused_naming_the_field(
        self, client: AsyncClient, session: AsyncSession
    ) -> None:
        regulator = await regulator_token(session)
        gym = await onboard_merchant(client, regulator, "Script Gym")
        refused = await client.post(
            "/v1/consumers", json={"phone": "13\u066812345678"}, headers={**bearer(gym.token), **key()}
        )
        assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in refused.json()["errors"]] == ["phone"]
        assert await session.scalar(select(func.count()).select_from(Consumer)) == 0

"""Money in the API: ``{"amount": 12345, "currency": "CNY"}``, integer fen, never a float."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class Money(BaseModel):
    """An amount of money in integer fen."""

    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(ge=0, lt=10**15, description="Integer fen (1 yuan = 100 fen).", examples=[200000])
    currency: Literal["CNY"] = "CNY"


class SignedMoney(BaseModel):
    """An amount that may be negative (a balance that can fall on either side), integer fen."""

    amount: StrictInt = Field(gt=-(10**15), lt=10**15, description="Integer fen; may be negative.", examples=[0])
    currency: Literal["CNY"] = "CNY"


def money(amount: int) -> Money:
    return Money(amount=amount)

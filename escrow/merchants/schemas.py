from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from escrow.kit.body import RequestModel
from escrow.kit.crypto import normalize_account_number
from escrow.kit.uscc import validate_uscc
from escrow.risk.regions import validate_region


class MerchantCreate(RequestModel):
    """A merchant to onboard."""

    name: str = Field(min_length=1, max_length=200, examples=["Iron Temple Fitness"])
    category: Literal["gym", "salon", "training", "other"]
    uscc: str = Field(description="Unified social credit code (GB 32100-2015), check character verified.")
    credit_rating: Literal["A", "B", "C", "D"]
    settlement_account: str = Field(description="Bank account receiving released funds; stored encrypted.")
    opened_on: date | None = Field(default=None, description="Business start date; defaults to today.")
    region: str | None = Field(
        default=None,
        examples=["440306"],
        description="County-level administrative division code (行政区划代码, 6 digits) where it trades, from the "
        "bundled table; optional (merchants onboarded before regions are read as region unknown).",
    )

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else validate_region(value)

    @field_validator("uscc")
    @classmethod
    def _uscc(cls, value: str) -> str:
        return validate_uscc(value)

    @field_validator("settlement_account")
    @classmethod
    def _account(cls, value: str) -> str:
        return normalize_account_number(value)


class MerchantOut(BaseModel):
    """A merchant: identity, credit rating, custody model and status."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    category: str
    uscc: str
    credit_rating: str
    settlement_account_masked: str
    status: str
    custody_model: str
    opened_on: date
    region: str | None = Field(description="County-level administrative division code, or null when not given.")
    created_at: datetime


class MerchantCreated(BaseModel):
    """The onboarded merchant with its API token, shown once."""

    merchant: MerchantOut
    token: str = Field(description="The merchant's API token, shown once.")


class MerchantStatusChange(RequestModel):
    """A status the regulator sets by hand, with the reason kept in the audit trail."""

    status: Literal["active", "suspended"]
    reason: str = Field(min_length=1, max_length=500)


class CustodyModelChange(RequestModel):
    """The custody model to apply to the merchant's future sales, with the reason kept in the audit trail."""

    model: Literal["full", "ratio"] = Field(
        description="full: 100 % of every card in custody; ratio: the ratio of the merchant's credit rating."
    )
    reason: str = Field(min_length=1, max_length=500)


class RegionChange(RequestModel):
    """The county-level division the merchant trades in, set by the regulator, with the reason kept in the audit
    trail."""

    region: str = Field(examples=["440306"], description="County-level administrative division code (6 digits).")
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return validate_region(value)
